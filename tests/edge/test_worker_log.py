"""A worker's log events reach its supervisor's log whole, naming the worker."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel

from bridge.logwriter import event_as_json_line, event_as_text_line, relay_line, \
    worker_observer


def relayed(emit, level="debug"):
    """The supervisor's events for what ``emit(logger)`` logged in worker 2."""
    stream = io.StringIO()
    emit(Logger(namespace="coapbridge.bridge", observer=worker_observer(stream, 2, level)))
    events = []
    for line in stream.getvalue().splitlines():
        relay_line(line, 2, events.append)
    return events


def test_an_event_keeps_its_level_logger_message_and_fields_and_gains_the_worker():
    [event] = relayed(lambda log: log.warn("Bad request from {peer}\nline 2", peer="10.0.0.7"))
    assert event["log_level"] == LogLevel.warn and event["worker"] == 2
    assert "[coapbridge.bridge#warn worker=2] Bad request from 10.0.0.7" in \
        event_as_text_line(event)
    record = json.loads(event_as_json_line(event))
    assert (record["level"], record["logger"], record["worker"], record["peer"]) == (
        "warning", "coapbridge.bridge", 2, "10.0.0.7")
    assert record["message"] == "Bad request from 10.0.0.7\nline 2"
    assert set(record) == {"time", "level", "logger", "message", "peer", "worker"}


def test_the_worker_formats_the_message_where_its_fields_are_whole():
    """Twisted's flattening would drop the format specification and the plural."""
    [event] = relayed(lambda log: log.info("{count:plural:uplink} in {seconds:.0f} s",
                                           count=1, seconds=2.4, thing=object()))
    record = json.loads(event_as_json_line(event))
    assert record["message"] == "1 uplink in 2 s"
    assert (record["count"], record["seconds"]) == (1, 2.4)
    assert record["thing"].startswith("<object object at ")  # its text, not "unpersistable"


def test_a_worker_writes_only_what_its_level_lets_through_but_always_its_events():
    def emit(log):
        log.info("an info line")
        log.error("an error line")
        log.info("Worker 2 started", worker_event="started", metrics_port=4)
    events = relayed(emit, "error")
    assert [e.get("worker_event") for e in events] == [None, "started"]
    assert "an error line" in event_as_text_line(events[0])


def test_a_failure_keeps_its_traceback_and_exception_text():
    def fail(log):
        try:
            {}["missing key"]
        except KeyError:
            log.failure("Handler failed for {device}", device="Dev A")
    [event] = relayed(fail)
    record = json.loads(event_as_json_line(event))
    assert record["level"] == "critical" and record["device"] == "Dev A"
    assert "KeyError: 'missing key'" in record["traceback"]
    assert "in fail" in record["traceback"]


def test_a_line_that_is_not_an_event_is_logged_as_text():
    events = []
    relay_line("some stray print", 1, events.append)
    [event] = events
    assert (event["line"], event["worker"], event["log_level"]) == ("some stray print", 1,
                                                                    LogLevel.info)
