"""The token scan warning: requests with unknown access tokens, summed up at most once a minute."""

from bridge.core import codes
from bridge.core.actions import Device, Log, Request
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from logtext import text
from bridge.core.tokenscan import UnknownTokens

NOW = 1_700_000_000.0


def scan_request(ref, token, remote):
    return Request(ref, codes.POST, ("api", "v1", token, "telemetry"), b'{"t": 1}', remote=remote)


def warnings(actions):
    return [a for a in actions if isinstance(a, Log) and a.level == "warn"]


def test_a_token_scan_logs_one_warning_a_minute_with_the_count_and_the_busiest_addresses():
    core = GatewayCore(core_config(), {"good": Device("Dev A", "t")}.get)
    assert warnings(core.on_tick(NOW)) == []
    [reply] = handled(core, scan_request(1, "guess0", ("10.0.0.1", 5683)), NOW)
    assert codes.dotted(reply.code) == "4.01"
    [first] = warnings(core.on_tick(NOW + 0.25))  # the first one at once
    # the first one is said at once: "1 request" (not "1 requests"), no "in the last 0 s"
    assert text(first).startswith("1 request with an unknown access token, from 1 address "
                                  "(answered 4.01")
    assert set(first.fields) == {"count", "seconds", "addresses", "busiest", "what", "hint"}
    assert "10.0.0.1 (1)" in text(first)
    # a scan: 300 requests over the next 90 s from three addresses, one of them busiest
    seen = []
    for n in range(300):
        now = NOW + 1 + n * 0.3
        remote = ("10.0.0.%d" % (2 if n % 3 else 3 + n % 2), 40000 + n)
        if n % 2:
            core.on_uplinks([(1000 + n, "guess%d" % n, "telemetry", b"{}", remote)], now)
        else:
            handled(core, scan_request(1000 + n, "guess%d" % n, remote), now)
        seen += [(now, log) for log in warnings(core.on_tick(now))]
    seen += [(NOW + 200, log) for log in warnings(core.on_tick(NOW + 200))]
    times = [t for t, _ in seen]
    assert len(seen) == 2 and times[0] >= NOW + 0.25 + 60 and times[1] >= times[0] + 60
    counted = [int(text(log).split()[0]) for _, log in seen]
    assert sum(counted) == 300
    for _, log in seen:  # two thirds of the scan came from 10.0.0.2
        assert "from 3 addresses" in text(log) and "most from 10.0.0.2 (" in text(log)
    assert core.stats["unknown_token"] == 301
    assert warnings(core.on_tick(NOW + 400)) == []  # nothing new: nothing to say


def test_valid_tokens_and_missing_tokens_are_not_counted_as_a_scan():
    core = GatewayCore(core_config(), {"good": Device("Dev A", "t")}.get)
    handled(core, scan_request(1, "good", ("10.0.0.1", 5683)), NOW)
    handled(core, Request(2, codes.POST, ("api", "v1"), b"", remote=("10.0.0.1", 5683)), NOW)
    assert warnings(core.on_tick(NOW + 1)) == [] and core.stats["unknown_token"] == 0


def test_unknown_tokens_counts_at_most_max_sources_addresses_but_every_request():
    scan = UnknownTokens(interval=60, top=2, max_sources=3)
    for n in range(10):
        scan.record("10.0.0.%d" % n, NOW)
    scan.record("10.0.0.1", NOW)
    line = text(Log("warn", *scan.warning(NOW + 5)))
    assert line.startswith("11 requests with an unknown access token in the last 5 s")
    assert "from at least 3 addresses" in line and "most from 10.0.0.1 (2), " in line
    assert len(scan.sources) == 0 and scan.warning(NOW + 6) is None
