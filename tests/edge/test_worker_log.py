"""A worker's log events reach its supervisor's log whole, naming the worker."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, textFileLogObserver

from bridge.logs import json_observer, relay_line, worker_observer


def relayed(emit):
    """The supervisor's events for what ``emit(logger)`` logged in worker 2."""
    stream = io.StringIO()
    emit(Logger(namespace="coapbridge.bridge", observer=worker_observer(stream, 2)))
    events = []
    for line in stream.getvalue().splitlines():
        relay_line(line, 2, events.append)
    return events


def test_an_event_keeps_its_level_namespace_text_and_fields_and_gains_the_worker():
    [event] = relayed(lambda log: log.warn("Bad request from {peer}\nline 2", peer="10.0.0.7"))
    assert event["log_level"] == LogLevel.warn and event["worker"] == 2
    text, as_json = io.StringIO(), io.StringIO()
    textFileLogObserver(text)(event)
    json_observer(as_json)(event)
    assert "[coapbridge.bridge#warn worker=2] Bad request from 10.0.0.7" in text.getvalue()
    record = json.loads(as_json.getvalue())
    assert (record["level"], record["namespace"], record["worker"], record["peer"]) == (
        "warn", "coapbridge.bridge", 2, "10.0.0.7")
    assert record["text"] == "Bad request from 10.0.0.7\nline 2"


def test_a_failure_keeps_its_traceback_and_exception_text():
    def fail(log):
        try:
            {}["missing key"]
        except KeyError:
            log.failure("Handler failed for {device}", device="Dev A")
    [event] = relayed(fail)
    record = json.loads(_json(event))
    assert record["level"] == "critical" and record["device"] == "Dev A"
    assert "KeyError: 'missing key'" in record["traceback"]
    assert "in fail" in record["traceback"]


def test_a_line_that_is_not_an_event_is_logged_as_text():
    events = []
    relay_line("some stray print", 1, events.append)
    [event] = events
    assert (event["line"], event["worker"], event["log_level"]) == ("some stray print", 1,
                                                                    LogLevel.info)


def _json(event):
    stream = io.StringIO()
    json_observer(stream)(event)
    return stream.getvalue()
