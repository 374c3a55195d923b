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
    finally:
        process.stop()
    records = lines_of(process)  # every line parses (json.loads raises otherwise)
    assert all({"time", "level", "namespace", "text"} <= set(r) for r in records)
    published = [r for r in records if r.get("device") == "Json Dev" and "topic" in r][-1]
    assert published["level"] == "debug" and published["namespace"] == "coapbridge.bridge"
    assert published["text"].startswith("Published v1/gateway/")
    [refused] = [r for r in records if "peer" in r and r.get("code") == "4.01"]
    assert "127.0.0.1" in refused["peer"] and refused["text"].startswith("Answered 4.01 to ")
    assert any(r["text"].startswith("CoAP listening on") for r in records)
