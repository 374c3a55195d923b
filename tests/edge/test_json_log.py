"""What the process writes: JSON lines of a stable schema, text lines as twistd's, the
plural in the format, Twisted's own lines named and levelled, and the level filter."""

from __future__ import annotations

import io
import json

from twisted.application.service import Application
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python import log as legacy_log

from bridge.logwriter import (LevelObserver, event_as_json_line, event_as_text_line,
                              format_message, json_observer, normalised, process_observer)
from bridge.settings import Config
from bridge.service import BridgeService

SCHEMA = ["time", "level", "logger", "message"]


def test_an_event_is_one_line_with_time_level_logger_message_then_its_fields():
    stream = io.StringIO()
    log = Logger(namespace="coapbridge.test", observer=json_observer(stream))
    log.warn("Bad request from {peer}\nsecond line", peer="10.0.0.7:5683", size=b"\x00",
             device="Dev A")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert list(record)[:4] == SCHEMA
    assert record["level"] == "warning" and record["logger"] == "coapbridge.test"
    assert record["message"] == "Bad request from 10.0.0.7:5683\nsecond line"
    assert record["time"].endswith("Z") and record["time"][:2] == "20"
    assert (record["peer"], record["device"], record["size"]) == ("10.0.0.7:5683", "Dev A",
                                                                  "b'\\x00'")
    assert set(record) == set(SCHEMA) | {"peer", "device", "size"}


def test_every_level_has_its_usual_name():
    names = []
    for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error,
                  LogLevel.critical):
        names.append(json.loads(event_as_json_line({"log_level": level, "log_format": "x",
                                                    "log_time": 0.0}))["level"])
    assert names == ["debug", "info", "warning", "error", "critical"]


def test_a_failure_carries_its_traceback():
    stream = io.StringIO()
    log = Logger(namespace="coapbridge.test", observer=json_observer(stream))
    try:
        raise ValueError("broken")
    except ValueError:
        log.failure("Handling {device} failed", device="Dev A")
    record = json.loads(stream.getvalue())
    assert record["message"] == "Handling Dev A failed" and record["level"] == "critical"
    assert "ValueError: broken" in record["traceback"]


def test_a_count_says_its_noun_with_the_right_plural_and_no_helper_field():
    def text(**fields):
        return format_message(dict(fields, log_format="{n:plural:device}, "
                                                       "{m:plural:address:addresses}"))
    assert text(n=1, m=1) == "1 device, 1 address"
    assert text(n=0, m=2) == "0 devices, 2 addresses"
    assert text(n=12, m=1) == "12 devices, 1 address"
    record = json.loads(event_as_json_line({"log_format": "{count:plural:uplink} stored",
                                            "count": 1, "log_time": 0.0}))
    assert record["message"] == "1 uplink stored" and record["count"] == 1
    assert set(record) == set(SCHEMA) | {"count"}


def test_format_specifications_still_apply():
    assert format_message({"log_format": "{s:.0f} s, {x!r}", "s": 12.6, "x": "a"}) == \
        "13 s, 'a'"


def test_twisteds_legacy_lines_are_named_twisted_and_its_port_lines_are_debug():
    captured = []
    globalLogPublisher.addObserver(captured.append)
    try:
        for text in ("Starting protocol <bridge.edge.coap.BridgeCoap object at 0x7f>",
                     "MetricsSite starting on 9683", "(UDP Port 5683 Closed)",
                     "something else Twisted says"):
            legacy_log.msg(text)
    finally:
        globalLogPublisher.removeObserver(captured.append)
    mine = [normalised(e) for e in captured if e.get("log_namespace") == "log_legacy"]
    assert [e["log_namespace"] for e in mine] == ["twisted"] * 4
    assert [e["log_level"] for e in mine] == [LogLevel.debug] * 3 + [LogLevel.info]
    record = json.loads(event_as_json_line(mine[0]))
    assert record["logger"] == "twisted" and record["level"] == "debug"
    assert record["message"].startswith("Starting protocol <bridge.edge.coap.BridgeCoap")
    assert set(record) == set(SCHEMA), record  # nothing of the legacy machinery
    assert "[twisted#debug] Starting protocol" in event_as_text_line(mine[0])


def test_the_level_observer_passes_what_is_at_its_level_or_above():
    for level, passed in (("error", ["error", "critical"]),
                          ("WARNING", ["warn", "error", "critical"]),
                          ("warn", ["warn", "error", "critical"]),
                          ("Info", ["info", "warn", "error", "critical"]),
                          ("debug", ["debug", "info", "warn", "error", "critical"])):
        seen = []
        observer = LevelObserver(seen.append, level)
        for name in ("debug", "info", "warn", "error", "critical"):
            observer({"log_level": LogLevel.levelWithName(name), "log_format": name,
                      "log_namespace": "coapbridge.test"})
        assert [e["log_format"] for e in seen] == passed, level


def test_the_process_observer_becomes_the_applications_log_observer():
    observer = process_observer(io.StringIO(), "json", "info")
    application = Application("coapbridge")
    BridgeService(Config(), Clock(), log_observer=observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer


def test_text_lines_keep_twistds_shape():
    line = event_as_text_line({"log_level": LogLevel.warn, "log_namespace": "coapbridge.bridge",
                               "log_format": "two\nlines {n:plural:uplink}", "n": 2,
                               "log_time": 0.0})
    assert line.endswith(" [coapbridge.bridge#warn] two\n\tlines 2 uplinks\n")
    assert line.startswith("1970-01-01T")


def test_unknown_values_are_written_as_text():
    line = event_as_json_line({"log_format": "x {thing}", "thing": object, "log_time": 0.0})
    assert json.loads(line)["thing"] == str(object) and line.endswith("\n")
