"""LOG_FORMAT=json: one event as one line of JSON, and twistd's application observer."""

from __future__ import annotations

import io
import json

from twisted.application.service import Application
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger

from bridge.settings import Config
from bridge.logs import event_as_json_line, json_observer
from bridge.service import BridgeService


def test_an_event_is_one_line_with_time_level_namespace_text_and_its_fields():
    stream = io.StringIO()
    log = Logger(namespace="coapbridge.test", observer=json_observer(stream))
    log.warn("Bad request from {peer}\nsecond line", peer="10.0.0.7:5683", size=b"\x00",
             device="Dev A")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warn" and record["namespace"] == "coapbridge.test"
    assert record["text"] == "Bad request from 10.0.0.7:5683\nsecond line"
    assert record["time"].endswith("Z") and record["time"][:2] == "20"
    assert (record["peer"], record["device"], record["size"]) == ("10.0.0.7:5683", "Dev A",
                                                                  "b'\\x00'")
    assert not any(key.startswith("log_") for key in record)


def test_a_failure_carries_its_traceback():
    stream = io.StringIO()
    log = Logger(namespace="coapbridge.test", observer=json_observer(stream))
    try:
        raise ValueError("broken")
    except ValueError:
        log.failure("Handling {device} failed", device="Dev A")
    record = json.loads(stream.getvalue())
    assert record["text"] == "Handling Dev A failed" and record["level"] == "critical"
    assert "ValueError: broken" in record["traceback"]


def test_json_lines_become_the_applications_log_observer_and_text_leaves_twistds():
    observer = json_observer(io.StringIO())
    application = Application("coapbridge")
    BridgeService(Config(), Clock(), log_observer=observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    plain = Application("coapbridge")
    BridgeService(Config(), Clock()).setServiceParent(plain)
    assert plain.getComponent(ILogObserver, None) is None


def test_unknown_values_are_written_as_text():
    line = event_as_json_line({"log_format": "x {thing}", "thing": object, "log_time": 0.0})
    assert json.loads(line)["thing"] == str(object) and line.endswith("\n")
