"""LOG_FORMAT=json: the real bridge's output is one JSON object per line, with the fields."""

from __future__ import annotations

import json

import coapraw as raw
from conftest import BridgeProcess, wait_until


def lines_of(process):
    return [json.loads(line) for line in process.read_log().splitlines() if line.strip()]


def test_json_log_lines_parse_and_carry_the_events_fields(tmp_path, broker):
    process = BridgeProcess(str(tmp_path), broker.port, log_format="json")
    process.add_device("Json Dev", "tokJson")
    process.start()
    try:
        client = raw.Client(process.host, process.coap_port)
        answer = client.exchange(raw.request(raw.POST, "/api/v1/tokJson/telemetry", b'{"j": 1}',
                                             mid=7, token=b"j1"))
        assert answer.code_str == "2.01"
        wait_until(lambda: any(r.get("device") == "Json Dev" and "topic" in r
                               for r in lines_of(process)), 10, "the publish's log line")
        answer = client.exchange(raw.request(raw.POST, "/api/v1/nope/telemetry", b'{"j": 1}',
                                             mid=8, token=b"j2"))
        assert answer.code_str == "4.01"
        wait_until(lambda: any("peer" in r and r.get("code") == "4.01"
                               for r in lines_of(process)), 10, "the 4.01's log line")
        wait_until(lambda: any(r["level"] == "warning" for r in lines_of(process)), 10,
                   "the token scan's warning")
    finally:
        process.stop()
    records = lines_of(process)  # every line parses (json.loads raises otherwise)
    # the stable schema: time, level, logger, message, then the fields
    assert all(list(r)[:4] == ["time", "level", "logger", "message"] for r in records)
    assert {r["level"] for r in records} <= {"debug", "info", "warning", "error", "critical"}
    assert not any("namespace" in r or "text" in r for r in records)
    published = [r for r in records if r.get("device") == "Json Dev" and "topic" in r][-1]
    assert published["level"] == "debug" and published["logger"] == "coapbridge.bridge"
    assert published["message"].startswith("Published v1/gateway/")
    [refused] = [r for r in records if "peer" in r and r.get("code") == "4.01"]
    assert "127.0.0.1" in refused["peer"] and refused["message"].startswith("Answered 4.01 to ")
    assert any(r["message"].startswith("CoAP listening on") for r in records)
    # Twisted's own lines: named twisted, its port lines at debug
    twisted = [r for r in records if r["message"].startswith("Starting protocol")]
    assert twisted and all((r["logger"], r["level"]) == ("twisted", "debug") for r in twisted)
    # the token scan's warning: no format helper among its fields, the plural right
    [scan] = [r for r in records if "unknown access token" in r["message"]
              and r["level"] != "debug"]
    assert scan["level"] == "warning"
    assert scan["message"].startswith("1 request with an unknown access token, from 1 address ")
    assert not {"requests", "handshakes"} & set(scan) and scan["addresses"] == 1
    [registry] = [r for r in records if r["message"].startswith("Device registry ")]
    assert registry["message"].endswith(": 1 device") and registry["count"] == 1
