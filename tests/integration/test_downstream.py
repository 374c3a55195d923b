"""Downstream through the real bridge: attribute reads, observe, server-side and client-side RPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, wait_until
from platform_sim import PlatformSim
from test_clients import LIBCOAP, NODE_COAP, libcoap

pytestmark = pytest.mark.integration
HERE = os.path.dirname(os.path.abspath(__file__))
OBSERVE, ETAG = 6, 4


def make_bridge(workdir, broker, protocol="5"):
    process = BridgeProcess(workdir, broker.port, protocol=protocol,
                            # quick CON timeouts; the empty ACK must come before them
                            coap={"ack_timeout": 0.3, "max_retransmit": 2,
                                  "empty_ack_delay": 0.25},
                            platform={"request_timeout": 1.5, "rpc_queue_ttl": 30})
    for n in range(1, 12):
        process.add_device("Dev %d" % n, "tok%d" % n, "sensor")
    return process.start()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    broker = Mosquitto(str(tmp_path_factory.mktemp("dbroker"))).start()
    platform = PlatformSim(broker.port)
    bridge = make_bridge(str(tmp_path_factory.mktemp("dbridge")), broker)
    yield broker, platform, bridge
    bridge.stop()
    platform.close()
    broker.stop()


_mid = [20000]


def next_mid():
    _mid[0] += 1
    return _mid[0]


def get(client, path, observe=None, token=b"\x10", mtype=raw.CON, query=()):
    extra = [(raw.URI_QUERY, q.encode()) for q in query]
    if observe is not None:
        extra.append((OBSERVE, b"" if observe == 0 else bytes([observe])))
    return client.exchange(raw.request(raw.GET, path, mtype=mtype, mid=next_mid(), token=token,
                                       extra=extra))


def notification(client, timeout=5.0, ack=True):
    msg = client.recv(timeout)
    if msg is not None and msg.mtype == raw.CON and ack:
        client.send(raw.Msg(raw.ACK, 0, msg.mid))
    return msg


# -- attribute reads -----------------------------------------------------------------

def test_attribute_read_with_keys_by_libcoap(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 1", {"a": 1, "b": "x"}, {"c": True, "d": 2.5, "e": 9})
    code, out = libcoap("-m", "get", bridge.url + "/api/v1/tok1/attributes?clientKeys=a,b&sharedKeys=c,d")
    assert code == "2.05"
    body = json.loads(out.strip().splitlines()[-1])
    assert body == {"client": {"a": 1, "b": "x"}, "shared": {"c": True, "d": 2.5}}
    requests = [r for r in platform.received("v1/gateway/attributes/request") if r["device"] == "Dev 1"]
    assert {"id": requests[0]["id"], "device": "Dev 1", "client": True, "keys": ["a", "b"]} in requests
    assert any(r.get("client") is False and r.get("keys") == ["c", "d"] for r in requests)


def test_attribute_read_single_key_uses_value_form(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 2", {"only": "c"}, {"s": 5})
    client = raw.Client(bridge.host, bridge.coap_port)
    reply = get(client, "/api/v1/tok2/attributes", query=["sharedKeys=s"])
    assert reply.code_str == "2.05" and json.loads(reply.payload) == {"shared": {"s": 5}}
    assert reply.uint(raw.CONTENT_FORMAT) == 50
    assert {"id": platform.received("v1/gateway/attributes/request")[-1]["id"], "device": "Dev 2",
            "client": False, "key": "s"} in platform.received("v1/gateway/attributes/request")


def test_attribute_read_without_keys_returns_all_client_and_shared(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 3", {"c1": 1, "c2": 2}, {"s1": "a"})
    client = raw.Client(bridge.host, bridge.coap_port)
    reply = get(client, "/api/v1/tok3/attributes")
    assert reply.code_str == "2.05"
    assert json.loads(reply.payload) == {"client": {"c1": 1, "c2": 2}, "shared": {"s1": "a"}}


def test_single_attribute_hidden_by_the_platform_is_found_by_its_known_name(env):
    """ThingsBoard answers "keys": [] with a nameless "value" when only one attribute exists."""
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    reply = client.exchange(raw.request(raw.POST, "/api/v1/tok4/attributes", b'{"lone": 3}',
                                        mid=next_mid()))
    assert reply.code_str == "2.01"
    platform.set_attributes("Dev 4", {"lone": 3}, {})
    reply = get(client, "/api/v1/tok4/attributes")
    assert reply.code_str == "2.05" and json.loads(reply.payload) == {"client": {"lone": 3}}


def test_attribute_read_of_unknown_keys_gets_4_04(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    reply = get(client, "/api/v1/tok4/attributes", query=["clientKeys=nope"])
    assert reply.code_str == "4.04"


def test_platform_silence_gets_5_04(env):
    broker, platform, bridge = env
    platform.answer_attributes = False
    try:
        client = raw.Client(bridge.host, bridge.coap_port, timeout=8)
        started = time.monotonic()
        reply = get(client, "/api/v1/tok4/attributes", query=["sharedKeys=x"])
        assert reply.code_str == "5.04"
        assert 1.0 <= time.monotonic() - started < 5
    finally:
        platform.answer_attributes = True


# -- shared-attribute observe ---------------------------------------------------------

def aiocoap_observer(bridge, token, count):
    """aiocoap observing the device's /attributes; it prints a JSON line per response."""
    return subprocess.Popen([sys.executable, os.path.join(HERE, "aiocoap_observe.py"),
                             "%s/api/v1/%s/attributes" % (bridge.url, token), str(count), "10"],
                            stdout=subprocess.PIPE, text=True)


def test_attribute_observe_with_aiocoap_gets_current_state_then_deltas(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 5", {}, {"mode": "eco", "unit": "C"})
    proc = aiocoap_observer(bridge, "tok5", 3)
    first = json.loads(proc.stdout.readline())
    assert first["code"] == "2.05"
    assert json.loads(first["payload"]) == {"mode": "eco", "unit": "C"}
    platform.push_attributes("Dev 5", {"mode": "comfort", "target": 21})
    second = json.loads(proc.stdout.readline())
    platform.push_attributes("Dev 5", {"deleted": ["target"]})
    third = json.loads(proc.stdout.readline())
    proc.wait(10)
    assert json.loads(second["payload"]) == {"mode": "comfort", "target": 21}
    assert json.loads(third["payload"]) == {"deleted": ["target"]}
    assert first["observe"] < second["observe"] < third["observe"]


def test_attribute_observe_with_node_coap_cli(env):
    broker, platform, bridge = env
    assert NODE_COAP, "node coap-cli missing"
    platform.set_attributes("Dev 6", {}, {})
    proc = subprocess.Popen([NODE_COAP, "get", "-o", bridge.url + "/api/v1/tok6/attributes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: platform.received("v1/gateway/attributes/request")
                   and any(r["device"] == "Dev 6" for r in platform.received(
                       "v1/gateway/attributes/request")), 10, "the observe refresh")
        time.sleep(0.5)
        platform.push_attributes("Dev 6", {"led": "on"})
        time.sleep(1.0)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "{}" in out and '{"led":"on"}' in out


def test_a_long_notification_goes_as_block_0_and_the_device_gets_the_rest_by_get(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 11", {}, {"mode": "eco", "unit": "C"})
    client = raw.Client(bridge.host, bridge.coap_port)
    reply = get(client, "/api/v1/tok11/attributes", observe=0, token=b"\xd1")
    assert reply.code_str == "2.05" and reply.option(raw.BLOCK2) is None
    asked = len(platform.received("v1/gateway/attributes/request"))
    note = "".join(chr(ord("a") + n % 26) for n in range(2500))
    platform.push_attributes("Dev 11", {"note": note})
    first = notification(client)
    assert first.token == b"\xd1" and first.option(OBSERVE) is not None
    block2 = first.uint(raw.BLOCK2)
    assert (block2 >> 4, bool(block2 & 8), block2 & 7) == (0, True, 6)
    assert len(first.payload) == 1024 and first.option(ETAG)
    body, number, more = first.payload, 1, True
    while more:
        part = client.exchange(raw.request(raw.GET, "/api/v1/tok11/attributes", mid=next_mid(),
                                           token=b"\xd2", extra=[(raw.BLOCK2,
                                                                   bytes([(number << 4) | 6]))]))
        assert part.code_str == "2.05" and part.option(OBSERVE) is None
        assert part.option(ETAG) == first.option(ETAG)  # the same representation
        assert part.uint(raw.BLOCK2) >> 4 == number
        more = bool(part.uint(raw.BLOCK2) & 8)
        body += part.payload
        number += 1
    assert number == 3 and json.loads(body) == {"note": note}
    assert len(platform.received("v1/gateway/attributes/request")) == asked  # not read again
    client.close()


def test_a_long_notification_reaches_aiocoap_whole_through_block2(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 9", {}, {"mode": "eco", "unit": "C"})
    proc = aiocoap_observer(bridge, "tok9", 2)
    first = json.loads(proc.stdout.readline())
    assert json.loads(first["payload"]) == {"mode": "eco", "unit": "C"}
    note = "".join(chr(ord("a") + n % 26) for n in range(3000))
    platform.push_attributes("Dev 9", {"note": note})
    second = json.loads(proc.stdout.readline())
    proc.wait(10)
    assert json.loads(second["payload"]) == {"note": note}  # three blocks, put together
    assert second["observe"] > first["observe"]


def test_a_long_notification_reaches_libcoap_whole_through_block2(env):
    broker, platform, bridge = env
    assert LIBCOAP
    note = "".join(chr(ord("A") + n % 26) for n in range(2500))
    platform.set_attributes("Dev 10", {}, {"mode": "eco", "unit": "C"})
    proc = subprocess.Popen([LIBCOAP, "-m", "get", "-s", "4",
                             bridge.url + "/api/v1/tok10/attributes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(r["device"] == "Dev 10" for r in
                               platform.received("v1/gateway/attributes/request")), 10,
                   "the observe refresh")
        time.sleep(0.5)
        platform.push_attributes("Dev 10", {"note": note})
        out = proc.communicate(timeout=15)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert '{"mode":"eco","unit":"C"}' in out
    assert '{"note":"%s"}' % note in out


def test_con_and_non_observers_get_notifications_of_their_own_type(env):
    broker, platform, bridge = env
    for mtype, token, device, tok in ((raw.CON, b"\xc1", "Dev 7", "tok7"),
                                      (raw.NON, b"\xc2", "Dev 8", "tok8")):
        client = raw.Client(bridge.host, bridge.coap_port)
        first = get(client, "/api/v1/%s/attributes" % tok, observe=0, token=token, mtype=mtype)
        assert first.code_str == "2.05" and first.uint(OBSERVE) is not None
        assert first.mtype == (raw.ACK if mtype == raw.CON else raw.NON)
        platform.push_attributes(device, {"n": 1})
        platform.push_attributes(device, {"n": 2})
        one, two = notification(client), notification(client)
        assert (one.mtype, two.mtype) == (mtype, mtype)
        assert (one.token, json.loads(one.payload), json.loads(two.payload)) == (token, {"n": 1},
                                                                                {"n": 2})
        assert first.uint(OBSERVE) < one.uint(OBSERVE) < two.uint(OBSERVE)
        client.close()


def test_deregistration_with_observe_1_is_answered_and_stops_notifications(env):
    broker, platform, bridge = env
    platform.set_attributes("Dev 7", {}, {"x": 1, "y": 2})
    client = raw.Client(bridge.host, bridge.coap_port)
    get(client, "/api/v1/tok7/attributes", observe=0, token=b"\xd1")
    reply = get(client, "/api/v1/tok7/attributes", observe=1, token=b"\xd1")
    assert reply.code_str == "2.05" and reply.option(OBSERVE) is None
    platform.push_attributes("Dev 7", {"x": 2})
    assert notification(client, timeout=1.0) is None


def test_rst_to_a_notification_cancels_the_relation(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    get(client, "/api/v1/tok7/attributes", observe=0, token=b"\xd2")
    platform.push_attributes("Dev 7", {"r": 1})
    note = notification(client, ack=False)
    client.send(raw.Msg(raw.RST, 0, note.mid))
    time.sleep(0.3)
    platform.push_attributes("Dev 7", {"r": 2})
    assert notification(client, timeout=1.0) is None


def test_unacknowledged_con_notification_cancels_the_peers_relations(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    get(client, "/api/v1/tok7/attributes", observe=0, token=b"\xd3")
    platform.push_attributes("Dev 7", {"lost": 1})
    copies = []
    while True:  # the notification and its 2 retransmissions, never acknowledged
        note = client.recv(3.0)
        if note is None:
            break
        copies.append(note)
    assert len(copies) == 3 and len({c.mid for c in copies}) == 1
    wait_until(lambda: "unacknowledged after 2 retransmissions" in bridge.read_log(), 5, "give-up")
    platform.push_attributes("Dev 7", {"lost": 2})
    assert notification(client, timeout=1.0) is None


def test_new_registration_from_a_new_port_replaces_the_old_one(env):
    broker, platform, bridge = env
    old = raw.Client(bridge.host, bridge.coap_port)
    new = raw.Client(bridge.host, bridge.coap_port)
    get(old, "/api/v1/tok7/attributes", observe=0, token=b"\xe1")
    get(new, "/api/v1/tok7/attributes", observe=0, token=b"\xe1")  # NAT rebinding
    platform.push_attributes("Dev 7", {"nat": 1})
    assert json.loads(notification(new).payload) == {"nat": 1}
    assert notification(old, timeout=0.7) is None


# -- server-side RPC ------------------------------------------------------------------

def test_rpc_observe_and_reply_with_libcoap(env, tmp_path):
    broker, platform, bridge = env
    assert LIBCOAP
    proc = subprocess.Popen([LIBCOAP, "-m", "get", "-s", "4", "-v", "6",
                             bridge.url + "/api/v1/tok1/rpc"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == "Dev 1")
    time.sleep(0.5)
    platform.send_rpc("Dev 1", 4242, "setGpio", {"pin": 7, "value": 1})
    out = proc.communicate(timeout=15)[0].decode(errors="replace")
    assert "c:2.03" in out
    assert '{"id":4242,"method":"setGpio","params":{"pin":7,"value":1}}' in out
    reply = tmp_path / "reply.json"
    reply.write_text('{"ok": true, "pin": 7}')
    code, _ = libcoap("-m", "post", "-f", str(reply), bridge.url + "/api/v1/tok1/rpc/4242")
    assert code == "2.01"
    platform.wait_for("v1/gateway/rpc", lambda p: p == {"device": "Dev 1", "id": 4242,
                                                        "data": {"ok": True, "pin": 7}})


def test_rpcs_wait_for_an_observer_and_arrive_in_order(env):
    broker, platform, bridge = env
    platform.send_rpc("Dev 2", 1, "first", {})
    platform.send_rpc("Dev 2", 2, "second", {"x": [1]})
    time.sleep(0.5)
    client = raw.Client(bridge.host, bridge.coap_port)
    first = get(client, "/api/v1/tok2/rpc", observe=0, token=b"\xf1")
    assert first.code_str == "2.03" and first.payload == b"" and first.uint(OBSERVE) is not None
    one, two = notification(client), notification(client)
    assert json.loads(one.payload) == {"id": 1, "method": "first", "params": {}}
    assert json.loads(two.payload) == {"id": 2, "method": "second", "params": {"x": [1]}}
    assert one.code_str == two.code_str == "2.05"


def test_get_rpc_without_observe_is_4_00_and_reply_must_be_json(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    assert get(client, "/api/v1/tok3/rpc").code_str == "4.00"
    bad = client.exchange(raw.request(raw.POST, "/api/v1/tok3/rpc/5", b"not json", mid=next_mid()))
    assert bad.code_str == "4.00"


# -- client-side RPC ------------------------------------------------------------------

def test_client_side_rpc_goes_through_the_gateway_session(env):
    broker, platform, bridge = env
    platform.client_rpc_answer = {"time": 1700000000}
    try:
        client = raw.Client(bridge.host, bridge.coap_port)
        reply = client.exchange(raw.request(raw.POST, "/api/v1/tok3/rpc",
                                            b'{"method": "getTime", "params": {"tz": "UTC"}}',
                                            mid=next_mid()))
        assert reply.code_str == "2.05" and json.loads(reply.payload) == {"time": 1700000000}
        sent = [json.loads(m.payload) for m in platform.messages
                if m.topic.startswith("v1/devices/me/rpc/request/")]
        assert {"method": "deviceRpc", "params": {"device": "Dev 3", "method": "getTime",
                                                  "params": {"tz": "UTC"}}} in sent
    finally:
        platform.client_rpc_answer = None


def test_unanswered_client_side_rpc_gets_5_04(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port, timeout=8)
    reply = client.exchange(raw.request(raw.POST, "/api/v1/tok3/rpc", b'{"method": "slow"}',
                                        mid=next_mid()), timeout=8)
    assert reply.code_str == "5.04"


# -- device lifecycle from the platform -----------------------------------------------

def test_platform_renames_and_deletes_devices(env):
    broker, platform, bridge = env
    client = raw.Client(bridge.host, bridge.coap_port)
    bridge.add_device("Old Name", "tokRen")
    post = lambda body: client.exchange(raw.request(raw.POST, "/api/v1/tokRen/telemetry", body,
                                                    mid=next_mid()))
    assert post(b'{"v": 1}').code_str == "2.01"
    platform.gateway_rpc(1, "gateway_device_renamed", {"Old Name": "New Name"})
    wait_until(lambda: any(e.name == "New Name" for e in bridge.registry.entries()), 5, "rename")
    assert post(b'{"v": 2}').code_str == "2.01"
    platform.wait_for("v1/gateway/telemetry", lambda p: "New Name" in p)
    platform.gateway_rpc(2, "gateway_device_deleted", "New Name")
    wait_until(lambda: post(b'{"v": 3}').code_str == "4.01", 5, "deleted device refused")


# -- echo immunity ----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_own_uplinks_are_never_taken_for_downstream_messages(tmp_path, protocol):
    broker = Mosquitto(str(tmp_path)).start()
    platform = PlatformSim(broker.port)
    bridge = make_bridge(str(tmp_path), broker, protocol)
    try:
        platform.set_attributes("Dev 1", {}, {})
        client = raw.Client(bridge.host, bridge.coap_port)
        assert get(client, "/api/v1/tok1/attributes", observe=0, token=b"\x99").code_str == "2.05"
        rpc_client = raw.Client(bridge.host, bridge.coap_port)
        assert get(rpc_client, "/api/v1/tok1/rpc", observe=0, token=b"\x98").code_str == "2.03"
        uplinks = [("/api/v1/tok1/attributes", b'{"echo": 1}'), ("/api/v1/tok1/rpc/77", b'{"r": 1}')]
        for path, body in uplinks:
            assert client.exchange(raw.request(raw.POST, path, body, mid=next_mid())).code_str == "2.01"
        platform.wait_for("v1/gateway/rpc", lambda p: p.get("id") == 77)
        assert notification(client, timeout=1.0) is None
        assert notification(rpc_client, timeout=0.5) is None
    finally:
        bridge.stop()
        platform.close()
        broker.kill()


# -- platform messages the bridge cannot handle ---------------------------------------

def deep(levels):
    return "[" * levels + "1" + "]" * levels


def test_platform_json_nested_5000_deep_is_skipped_and_the_link_keeps_reading(tmp_path):
    """Issue #16 item 3: a 5,000-deep document once stopped the bridge reading MQTT."""
    broker = Mosquitto(str(tmp_path)).start()
    platform = PlatformSim(broker.port)
    bridge = make_bridge(str(tmp_path), broker)
    proc = None
    try:
        platform.set_attributes("Dev 1", {}, {"mode": "eco", "unit": "C"})
        proc = aiocoap_observer(bridge, "tok1", 2)
        first = json.loads(proc.stdout.readline())
        assert json.loads(first["payload"]) == {"mode": "eco", "unit": "C"}
        hostile = {"v1/gateway/attributes": '{"device": "Dev 1", "data": {"x": %s}}',
                   "v1/gateway/rpc": '{"device": "Dev 1", "data": {"id": 1, "method": "m", '
                                     '"params": %s}}',
                   "v1/gateway/attributes/response": '{"id": 1, "device": "Dev 1", "value": %s}'}
        for topic, body in hostile.items():
            platform.client.publish(topic, body % deep(5000), qos=1).wait_for_publish(5)
        platform.push_attributes("Dev 1", {"mode": "comfort"})  # queued behind them
        second = json.loads(proc.stdout.readline())
        assert json.loads(second["payload"]) == {"mode": "comfort"}
        # an uplink still gets through on the same connection: its PUBACK came, or the
        # bridge would have reset the link after mqtt.puback_timeout and connected again
        client = raw.Client(bridge.host, bridge.coap_port)
        assert client.exchange(raw.request(raw.POST, "/api/v1/tok1/telemetry", b'{"after": 1}',
                                           mid=next_mid())).code_str == "2.01"
        platform.wait_for("v1/gateway/telemetry",
                          lambda p: any("after" in e["values"] for e in p.get("Dev 1", [])))
        wait_until(lambda: "Published v1/gateway/telemetry" in bridge.read_log(), 5, "publish")
        log = bridge.read_log()
        assert bridge.connected_count() == 1 and "Resetting the MQTT connection" not in log
        for topic in hostile:
            assert log.count("skipped a message from the platform on %s: it is nested deeper "
                             "than 34 levels" % topic) == 1
        assert "Traceback" not in log and "RecursionError" not in log
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        bridge.stop()
        platform.close()
        broker.kill()
