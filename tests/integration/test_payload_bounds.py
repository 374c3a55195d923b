"""Device documents the platform could not take, against the real bridge with the shipped
defaults: deep nesting, numbers beyond the platform's long and int, repeated keys. One bad
request is answered 4.00 and harms no other request of its turn."""

from __future__ import annotations

import json

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, Platform, wait_until

pytestmark = pytest.mark.integration
DEVICES = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("bounds"))
    broker = Mosquitto(workdir).start()
    bridge = BridgeProcess(workdir, broker.port)  # the shipped limits, json_max_depth 32
    for n in range(DEVICES):
        bridge.add_device("Bound %d" % n, "boundTok%d" % n)
    bridge.start()
    platform = Platform(broker.port)
    yield bridge, platform
    platform.close()
    bridge.stop()
    broker.kill()


def answers(client, requests, timeout=10.0):
    """Send every request at once, then gather the final answer to each (by token)."""
    for request in requests:
        client.send(request)
    final = {}
    while len(final) < len(requests):
        reply = client.recv(timeout)
        assert reply is not None, "answers to %d of %d requests" % (len(final), len(requests))
        if reply.mtype == raw.CON:
            client.send(raw.Msg(raw.ACK, 0, reply.mid))
        if reply.code != 0:
            final[reply.token] = reply
    return [final[request.token] for request in requests]


def post(n, path, payload):
    return raw.request(raw.POST, path, payload, mid=0x4000 + n, token=b"b%03d" % n)


def test_one_deeply_nested_body_gets_4_00_and_the_29_others_of_its_turn_2_01(setup):
    bridge, platform = setup
    deep = b'{"v": ' + b"[" * 1200 + b"]" * 1200 + b"}"
    requests = [post(n, "/api/v1/boundTok%d/telemetry" % n, b'{"n": %d}' % n)
                for n in range(DEVICES - 1)]
    requests.insert(13, post(99, "/api/v1/boundTok%d/telemetry" % (DEVICES - 1), deep))
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        replies = answers(client, requests)
    finally:
        client.close()
    codes = [reply.code_str for reply in replies]
    assert codes == ["2.01"] * 13 + ["4.00"] + ["2.01"] * (DEVICES - 14)
    assert b"nested deeper than 32 levels" in replies[13].payload
    wait_until(lambda: len({next(iter(doc)) for doc in platform.received("v1/gateway/telemetry")
                            }) >= DEVICES - 1, 15, "the 29 uplinks at the platform")
    log = bridge.read_log()
    assert "Traceback" not in log and "RecursionError" not in log
    assert "#critical]" not in log and "#error]" not in log  # twistd's [namespace#level]


@pytest.mark.parametrize("path,payload,reason", [
    ("telemetry", b'{"ts": %d, "values": {"t": 1}}' % 2 ** 70, b"ts must be"),
    ("telemetry", b'{"ts": -1, "values": {"t": 1}}', b"ts must be"),
    ("claim", b'{"durationMs": %d}' % 2 ** 70, b"durationMs must be"),
    ("rpc/%d" % 10 ** 23, b'{"ok": true}', b"out of range"),
])
def test_numbers_beyond_the_platforms_long_or_int_get_4_00(setup, path, payload, reason):
    bridge, _ = setup
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        reply = client.exchange(raw.request(raw.POST, "/api/v1/boundTok0/" + path, payload))
    finally:
        client.close()
    assert reply.code_str == "4.00" and reason in reply.payload


def test_a_repeated_key_reaches_the_platform_once_with_its_last_value(setup):
    bridge, platform = setup
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        for n, path in enumerate(("telemetry", "attributes")):
            reply = client.exchange(raw.request(raw.POST, "/api/v1/boundTok1/" + path,
                                                b'{"dup%d": 1, "x": 0, "dup%d": 2}' % (n, n),
                                                mid=0x5000 + n))
            assert reply.code_str == "2.01"
    finally:
        client.close()

    def sent(key):
        with platform.lock:
            return [m.payload for m in platform.messages if key in m.payload]
    for key, topic in ((b'"dup0"', "telemetry"), (b'"dup1"', "attributes")):
        [payload] = wait_until(lambda: sent(key), 10, "the %s upload" % topic)
        assert payload.count(key) == 1
        doc = json.loads(payload)["Bound 1"]
        assert (doc[0]["values"] if topic == "telemetry" else doc)[key.strip(b'"').decode()] == 2
