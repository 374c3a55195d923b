"""Device uplinks through the real bridge (twistd) to a real mosquitto, seen by a paho platform."""

from __future__ import annotations

import json
import time

import pytest

import coapraw as raw

pytestmark = pytest.mark.integration


@pytest.fixture
def client(bridge):
    c = raw.Client(bridge.host, bridge.coap_port)
    yield c
    c.close()


_mid = [1000]


def post(client, path, payload, mtype=raw.CON, extra=None):
    _mid[0] += 1
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.exchange(raw.request(raw.POST, path, body, mtype=mtype, mid=_mid[0],
                                       token=_mid[0].to_bytes(2, "big"), extra=extra))


def telemetry_of(platform, device, key):
    def match(payload):
        return device in payload and any(key in e["values"] for e in payload[device])
    return platform.wait_for("v1/gateway/telemetry", match)[device]


def test_telemetry_object_gets_2_01_after_connect_with_profile(bridge, platform, client):
    before = time.time() * 1000
    reply = post(client, "/api/v1/tokenA/telemetry", {"temperature": 21.5, "on": True})
    assert reply.code_str == "2.01"
    entries = telemetry_of(platform, "Dev A", "temperature")
    assert entries[0]["values"] == {"temperature": 21.5, "on": True}
    assert before - 50 <= entries[0]["ts"] <= time.time() * 1000 + 50
    topics = platform.topics()
    connect_at = topics.index("v1/gateway/connect")
    assert platform.received("v1/gateway/connect")[0] == {"device": "Dev A", "type": "thermostat"}
    assert connect_at < topics.index("v1/gateway/telemetry")


@pytest.mark.parametrize("payload, expected", [
    ([{"k1": 1}, {"k1": 2}], [{"k1": 1}, {"k1": 2}]),
    ({"ts": 1700000000000, "values": {"k2": "text"}}, [{"k2": "text"}]),
    ([{"ts": 1700000000001, "values": {"k3": [1, {"a": None}]}}, {"k3": {"x": 1.25}}],
     [{"k3": [1, {"a": None}]}, {"k3": {"x": 1.25}}]),
    ({"k4": 12345678901234567890, "k4b": -3, "k4c": "42"}, [{"k4": 12345678901234567890,
                                                            "k4b": -3, "k4c": "42"}]),
], ids=["array", "ts-values", "mixed-nested-json", "long-and-strings"])
def test_every_telemetry_form_reaches_the_platform(bridge, platform, client, payload, expected):
    key = next(iter(expected[0]))
    assert post(client, "/api/v1/tokenA/telemetry", payload).code_str == "2.01"
    entries = telemetry_of(platform, "Dev A", key)
    assert [e["values"] for e in entries] == expected
    if isinstance(payload, dict) and "ts" in payload:
        assert entries[0]["ts"] == payload["ts"]


def test_attributes_become_client_attributes(bridge, platform, client):
    assert post(client, "/api/v1/tokenB/attributes", {"fw": "1.0", "bat": 87}).code_str == "2.01"
    found = platform.wait_for("v1/gateway/attributes", lambda p: "Dev B" in p)
    assert found == {"Dev B": {"fw": "1.0", "bat": 87}}


def test_claim_with_defaults_and_values(bridge, platform, client):
    assert post(client, "/api/v1/tokenB/claim", b"").code_str == "2.01"
    platform.wait_for("v1/gateway/claim", lambda p: p == {"Dev B": {"secretKey": "", "durationMs": 0}})
    assert post(client, "/api/v1/tokenB/claim", {"secretKey": "s3", "durationMs": 60000}).code_str == "2.01"
    platform.wait_for("v1/gateway/claim",
                      lambda p: p == {"Dev B": {"secretKey": "s3", "durationMs": 60000}})


def test_single_uri_path_option_holding_slashes_is_split(bridge, platform, client):
    _mid[0] += 1
    msg = raw.Msg(raw.CON, raw.POST, _mid[0], b"\x07", [(raw.URI_PATH, b"/api/v1/tokenA/TELEMETRY")],
                  b'{"split": 1}')
    assert client.exchange(msg).code_str == "2.01"
    telemetry_of(platform, "Dev A", "split")


@pytest.mark.parametrize("method, path, payload, code", [
    (raw.POST, "/api/v1/nosuchtoken/telemetry", b'{"a":1}', "4.01"),
    (raw.POST, "/api/v1/telemetry", b'{"a":1}', "4.01"),
    (raw.POST, "/api/v1/tokenA/telemetry", b"", "4.00"),
    (raw.POST, "/api/v1/tokenA/telemetry", b"{not json", "4.00"),
    (raw.POST, "/api/v1/tokenA/telemetry", b'"a string"', "4.00"),
    (raw.POST, "/api/v1/tokenA/telemetry", b'{"ts": "x", "values": {"a": 1}}', "4.00"),
    (raw.POST, "/api/v1/tokenA/attributes", b"[1,2]", "4.00"),
    (raw.POST, "/api/v1/tokenA/claim", b"[]", "4.00"),
    (raw.POST, "/api/v1/tokenA/nosuchfeature", b"{}", "4.00"),
    (raw.GET, "/api/v1/tokenA/telemetry", b"", "4.00"),
    (raw.POST, "/somewhere/else", b"{}", "4.04"),
    (raw.PUT, "/api/v1/tokenA/telemetry", b'{"a":1}', "4.05"),
    (raw.DELETE, "/api/v1/tokenA/telemetry", b"", "4.05"),
    (5, "/api/v1/tokenA/telemetry", b"", "4.05"),  # FETCH
], ids=["unknown-token", "missing-token", "empty", "invalid-json", "not-object", "bad-ts",
        "attributes-array", "claim-array", "unknown-feature", "get-telemetry", "outside-api",
        "put", "delete", "fetch"])
def test_error_codes(bridge, client, method, path, payload, code):
    _mid[0] += 1
    reply = client.exchange(raw.request(method, path, payload, mid=_mid[0]))
    assert reply.code_str == code
    assert reply.mtype == raw.ACK  # errors are piggybacked


@pytest.fixture(scope="module")
def credential_device(bridge):
    """A device with a certificate and a PSK as well as a token (issue #14)."""
    bridge.registry.add("Dev X509", "tokenX", "default", cert_sha3="e" * 64,
                        psk_identity="id-x", psk_key=b"psk-key")
    return "tokenX"


@pytest.mark.parametrize("method, path", [
    (raw.POST, "/api/v1/telemetry"), (raw.POST, "/api/v1/attributes"),
    (raw.GET, "/api/v1/attributes?sharedKeys=a"), (raw.GET, "/api/v1/rpc"),
    (raw.POST, "/api/v1/rpc/5"), (raw.POST, "/api/v1/rpc"), (raw.POST, "/api/v1/claim"),
    (raw.GET, "/api/v1/firmware?title=t&version=1"), (raw.GET, "/fw"), (raw.GET, "/sw"),
])
def test_token_less_forms_over_plain_udp_are_4_01(bridge, client, credential_device, method,
                                                  path):
    # only a DTLS session that verified a certificate or PSK names the device: plain UDP
    # has none, whatever credentials the registry holds
    _mid[0] += 1
    path, _, query = path.partition("?")
    reply = client.exchange(raw.request(
        method, path, b'{"a": 1}' if method == raw.POST else b"", mid=_mid[0],
        extra=[(raw.URI_QUERY, item.encode()) for item in query.split("&") if item]))
    assert reply.code_str == "4.01"
    assert post(client, "/api/v1/%s/telemetry" % credential_device, {"x": 1}).code_str == "2.01"


def test_unknown_critical_option_gets_4_02(bridge, client):
    reply = post(client, "/api/v1/tokenA/telemetry", {"a": 1}, extra=[(9, b"x")])
    assert reply.code_str == "4.02"


def test_oversized_gateway_message_gets_4_13_and_is_not_published(bridge, platform, client):
    big = {"blob": "x" * 25000}
    reply = post(client, "/api/v1/tokenA/telemetry", big)
    assert reply.code_str == "4.13"
    assert reply.uint(raw.SIZE1) == 20000
    time.sleep(0.3)
    assert not any("blob" in str(p) for p in platform.received("v1/gateway/telemetry"))


def test_large_datagram_is_not_truncated(bridge, platform, client):
    body = {"big": "y" * 10000}
    assert post(client, "/api/v1/tokenA/telemetry", body).code_str == "2.01"
    assert telemetry_of(platform, "Dev A", "big")[0]["values"]["big"] == "y" * 10000


def test_non_request_gets_non_response(bridge, platform, client):
    reply = post(client, "/api/v1/tokenA/telemetry", {"nonkey": 1}, mtype=raw.NON)
    assert (reply.mtype, reply.code_str) == (raw.NON, "2.01")
    telemetry_of(platform, "Dev A", "nonkey")


def test_con_answer_is_piggybacked_when_ready(bridge, client):
    _mid[0] += 1
    client.send(raw.request(raw.POST, "/api/v1/tokenA/telemetry", b'{"pb": 1}', mid=_mid[0]))
    reply = client.recv(5)
    assert (reply.mtype, reply.mid, reply.code_str) == (raw.ACK, _mid[0], "2.01")


def test_duplicate_con_is_answered_from_cache_and_published_once(bridge, platform, client):
    _mid[0] += 1
    msg = raw.request(raw.POST, "/api/v1/tokenA/telemetry", b'{"dup": 7}', mid=_mid[0])
    first = client.exchange(msg)
    second = client.exchange(msg)
    assert raw.encode(first) == raw.encode(second)
    telemetry_of(platform, "Dev A", "dup")
    time.sleep(0.3)
    count = sum(1 for p in platform.received("v1/gateway/telemetry")
                if any("dup" in e["values"] for e in p.get("Dev A", [])))
    assert count == 1


def test_registry_changes_apply_without_restart(bridge, platform, client):
    assert post(client, "/api/v1/tokenLate/telemetry", {"late": 1}).code_str == "4.01"
    bridge.add_device("Dev Late", "tokenLate", "sensor")
    assert post(client, "/api/v1/tokenLate/telemetry", {"late": 2}).code_str == "2.01"
    platform.wait_for("v1/gateway/connect", lambda p: p == {"device": "Dev Late", "type": "sensor"})
    bridge.registry.remove("Dev Late")
    assert post(client, "/api/v1/tokenLate/telemetry", {"late": 3}).code_str == "4.01"


def test_tokens_never_appear_in_full_in_the_log(bridge, client):
    post(client, "/api/v1/tokenA/telemetry", {"z": 1})
    post(client, "/api/v1/secretTOKEN123/telemetry", {"z": 1})
    log = bridge.read_log()
    assert "tokenA" not in log and "secretTOKEN123" not in log


def test_metrics_endpoint_counts_uplinks(tmp_path, broker):
    import urllib.request
    from conftest import BridgeProcess, free_port, wait_until
    port = free_port()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port})
    process.add_device("M", "tokM")
    process.start()
    try:
        client = raw.Client(process.host, process.coap_port)
        assert post(client, "/api/v1/tokM/telemetry", {"m": 1}).code_str == "2.01"
        assert post(client, "/api/v1/nope/telemetry", {"m": 1}).code_str == "4.01"
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
        text = text.decode()
        assert "coapbridge_uplinks_acknowledged_total 1" in text
        wait_until(lambda: "coapbridge_uplink_publishes_total 1" in urllib.request.urlopen(
            "http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode(), 5, "the publish")
        assert 'coapbridge_coap_errors_total{code="4.01",route="telemetry",transport="udp"} 1.0' \
            in text
        assert "coapbridge_mqtt_connected 1" in text
        assert "# TYPE coapbridge_outbox_entries gauge" in text
        # prometheus_client: both requests' answer times, and the process metrics
        assert "coapbridge_coap_request_seconds_count 2.0" in text
        assert "process_resident_memory_bytes" in text
    finally:
        process.stop()


def test_devices_behind_one_address_each_have_their_own_pending_bound(tmp_path):
    # A carrier NAT: 70 devices on 70 ports of one address, each waiting for an attribute
    # read the platform does not answer (more than limits.max_pending_per_peer, 64); a
    # telemetry POST from another port of that address is still served (shipped limits).
    # Its own broker: a second bridge with the default client id would take over the
    # module bridge's session.
    from conftest import BridgeProcess, Mosquitto, Platform, wait_until
    broker = Mosquitto(str(tmp_path)).start()
    platform = Platform(broker.port)
    process = BridgeProcess(str(tmp_path), broker.port, platform={"request_timeout": 3})
    for n in range(71):
        process.add_device("Nat %d" % n, "nat%d" % n)
    process.start()
    sockets = [raw.Client(process.host, process.coap_port, timeout=10) for _ in range(70)]
    try:
        for n, sock in enumerate(sockets):
            sock.send(raw.request(raw.GET, "/api/v1/nat%d/attributes" % n, mid=n + 1))

        def asked():
            return {body.get("device") for body in platform.received(
                "v1/gateway/attributes/request")} >= {"Nat %d" % n for n in range(70)}
        wait_until(asked, 10, "70 attribute reads pending at the platform")
        client = raw.Client(process.host, process.coap_port)
        assert post(client, "/api/v1/nat70/telemetry", {"nat": 1}).code_str == "2.01"
        client.close()
        answers = [separate_answer(sock) for sock in sockets]
        assert [a.code_str if a else None for a in answers] == ["5.04"] * 70
    finally:
        for sock in sockets:
            sock.close()
        process.stop()
        platform.close()
        broker.kill()


def separate_answer(sock):
    """The answer to a slow CON request: its empty ACK first, then the response."""
    reply = sock.recv()
    while reply is not None and reply.code == 0:
        reply = sock.recv()
    return reply
