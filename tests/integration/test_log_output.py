"""What ``twistd -n coapbridge`` writes, at each ``LOG_LEVEL``: every line obeys it, Twisted's
own included, and the level is read by its usual names in any case."""

from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import coapraw as raw
from conftest import BridgeProcess, free_ports, probe, wait_until

LINE = re.compile(r"^\S+ \[([^\]#]+)#(\w+)(?: worker=\d+)?\] ")


def run(tmp_path, broker, env, warning_shown=False, **overrides):
    """A bridge whose log_level comes from LOG_LEVEL (as the shipped file's), one device;
    a request with an unknown token (a warning, once the core's timer sums it up) and an
    uplink; the log it wrote, once stopped."""
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port},
                            log_level="${LOG_LEVEL:info}", log_format="${LOG_FORMAT:text}",
                            **overrides)
    process.add_device("Log Dev", "tokLog")
    process.start(wait_mqtt=False, env=env,
                  listening=lambda: probe(port, "/readyz")[0] == 200)
    try:
        client = raw.Client(process.host, process.coap_port)
        assert client.exchange(raw.request(raw.POST, "/api/v1/nope/telemetry", b'{"a": 1}',
                                           mid=1, token=b"l1")).code_str == "4.01"
        assert client.exchange(raw.request(raw.POST, "/api/v1/tokLog/telemetry", b'{"a": 1}',
                                           mid=2, token=b"l2")).code_str == "2.01"
        # the core's timer sums the unknown tokens up within a tick; its metric says when
        wait_until(lambda: counted(probe(port, "/metrics")[1]) == 1, 10, "the 4.01 counted")
        if warning_shown:
            wait_until(lambda: "unknown access token, " in process.read_log(), 10, "the warning")
        else:  # the core's timer (0.25 s) has had its turns to sum it up before the stop
            time.sleep(1.0)
        client.close()
    finally:
        process.stop()
    return process.read_log()


def counted(metrics):
    """coapbridge_unknown_token_total, summed over the workers."""
    return sum(sample.value for family in text_string_to_metric_families(metrics)
               for sample in family.samples if sample.name == "coapbridge_unknown_token_total")


def text_lines(log):
    lines = [line for line in log.splitlines() if line and not line.startswith("\t")]
    levels = []
    for line in lines:
        match = LINE.match(line)
        assert match, line
        levels.append(match.group(2))
    return lines, levels


def test_log_level_error_silences_every_line_twisteds_included(tmp_path, broker):
    log = run(tmp_path, broker, {"LOG_LEVEL": "error"})
    lines, levels = text_lines(log)
    assert lines == [], log  # a clean run at error: not even twistd's "starting up"


@pytest.mark.parametrize("name", ["WARNING", "warn", "Warning"])
def test_log_level_warning_in_any_spelling_keeps_the_warnings_only(tmp_path, broker, name):
    log = run(tmp_path, broker, {"LOG_LEVEL": name}, warning_shown=True)
    lines, levels = text_lines(log)
    assert set(levels) == {"warn"}, log
    [scan] = [line for line in lines if "unknown access token" in line]
    # one request, one address, said at once: no "1 requests", no "in the last 0 s"
    assert "] 1 request with an unknown access token, from 1 address (answered 4.01" in scan


def test_log_level_debug_shows_twisteds_port_lines_as_debug(tmp_path, broker):
    log = run(tmp_path, broker, {"LOG_LEVEL": "DEBUG"}, warning_shown=True)
    lines, levels = text_lines(log)
    starting = [line for line in lines if "Starting protocol <" in line]
    assert starting and all("[twisted#debug] " in line for line in starting)
    assert any("[twisted#debug] (UDP Port " in line for line in lines)
    info = [line for line in lines if "#info]" in line]
    assert not [line for line in info if "Starting protocol" in line or "Port " in line]
    assert any(line.endswith("] Device registry sqlite:///%s/data/registry.sqlite3: 1 device"
                             % tmp_path) for line in lines), log


def test_log_level_info_hides_twisteds_port_lines(tmp_path, broker):
    log = run(tmp_path, broker, {"LOG_LEVEL": "info"}, warning_shown=True)
    lines, levels = text_lines(log)
    assert "debug" not in levels and "Starting protocol" not in log
    assert any("[twisted.scripts._twistd_unix.UnixAppLogger#info] twistd " in line
               for line in lines)


def test_json_lines_at_warning_have_the_stable_schema(tmp_path, broker):
    log = run(tmp_path, broker, {"LOG_LEVEL": "Warning", "LOG_FORMAT": "json"},
              warning_shown=True)
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert records and all(list(r)[:4] == ["time", "level", "logger", "message"]
                           for r in records)
    assert {r["level"] for r in records} == {"warning"}
    [scan] = records
    assert scan["logger"] == "coapbridge.bridge"
    assert set(scan) == {"time", "level", "logger", "message", "count", "seconds",
                         "addresses", "busiest", "what", "hint"}


def test_workers_obey_the_level_too(tmp_path, broker):
    log = run(tmp_path, broker, {"LOG_LEVEL": "error", "COAP_WORKERS": "2"},
              coap={"workers": "${COAP_WORKERS:1}"})
    assert text_lines(log)[0] == [], log
