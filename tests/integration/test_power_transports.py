"""Power saving over CoAPs (DTLS) and over CoAP over TCP (RFC 8323), through the real bridge,
real mosquitto, libcoap's coap-client-openssl and coap-client-notls, and the tests' own
DTLS client (tests/dtlsclient.py) as a device that truly sleeps.

What must hold beside plain UDP's (test_power_saving.py): a sleeping PSM device's DTLS
session is kept however long it sleeps, because it has observe relations (the DTLS idle
timeout's rule), and the downlinks held for it reach it over that session after its next
request, from any session; a CON notification unacknowledged when it falls asleep is
withdrawn from CoAPs' own message layer, not retransmitted; over TCP, where nothing is
retransmitted at all, the same holding happens.

The settings under test: the PSM activity timer (1.5 s, not ThingsBoard's 10 s, so that a
device falls asleep within the test) and ``dtls.idle_timeout`` (2 s instead of 600 s, so
that the device sleeps well past it); the rest is the shipped defaults.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, free_port, free_ports, wait_until
from dtlsclient import DtlsClient, client_context
from platform_sim import PlatformSim
from test_dtls import Pki
from test_power_saving import (OBSERVE, Events, asleep, metrics, observe_both, post, profile,
                               transitions)

pytestmark = pytest.mark.integration
OPENSSL = shutil.which("coap-client-openssl")
IDLE_TIMEOUT = 2.0
KEYS = {"psk-a": b"sleepy-secret-a", "psk-b": b"sleepy-secret-b"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("powertransports"))
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    pki = Pki(workdir)
    port, tcp_port, dtls_port = free_port(), free_port(), free_ports()
    bridge = BridgeProcess(
        workdir, broker.port, metrics={"port": port}, coap={"transport_log": True},
        dtls={"enabled": True, "cert_file": pki.cert, "key_file": pki.key,
              "ca_file": pki.ca_file, "bind_port": dtls_port,
              "idle_timeout": IDLE_TIMEOUT},
        reliable={"tcp": {"enabled": True, "bind_port": tcp_port}},
        device_profiles={"psm": profile("PSM")})
    for token, key in KEYS.items():  # PSK identity = the token
        bridge.registry.add("Sleepy %s" % token[-1].upper(), token, "psm", psk_key=key)
    bridge.add_device("Sleepy T", "psm-t", "psm")
    bridge.start()
    wait_until(lambda: "CoAPs (DTLS) listening" in bridge.read_log(), 10, "DTLS to listen")
    bridge.dtls_port, bridge.tcp_port = dtls_port, tcp_port
    yield platform, bridge, port
    bridge.stop()
    platform.close()
    broker.stop()


def openssl(token):
    assert OPENSSL, "libcoap3-bin's coap-client-openssl is missing (make test installs it)"
    return [OPENSSL, "-u", token, "-k", KEYS[token].decode()]


def test_a_sleeping_psm_device_keeps_its_dtls_session_and_gets_what_was_held(env):
    """coap-client-openssl observes over one PSK session; the device posts over others.
    Asleep for three idle timeouts, its observing session is kept (it has relations), and
    the merged change and the RPC held meanwhile reach it there after its next post."""
    platform, bridge, port = env
    base = "coaps://127.0.0.1:%d" % bridge.dtls_port
    uplink = base + "/api/v1/psk-a/telemetry"
    events = Events()
    attributes, rpc = observe_both(bridge, platform, "psk-a", "Sleepy A", events, base,
                                   openssl("psk-a"))
    try:
        before = transitions(platform, "Sleepy A")
        post(bridge, "psk-a", {"seq": 1}, uplink, openssl("psk-a"))
        asleep(platform, "Sleepy A", before)
        mark = events.mark()
        platform.push_attributes("Sleepy A", {"a": 1, "b": 2})
        platform.push_attributes("Sleepy A", {"a": 3})
        platform.send_rpc("Sleepy A", 71, "setValve", {"open": True})
        time.sleep(3 * IDLE_TIMEOUT)  # asleep, silent, well past the idle timeout
        assert events.since(mark, "attributes") == [] and events.since(mark, "rpc") == []
        assert metrics(port)["coapbridge_observers"] >= 2
        post(bridge, "psk-a", {"seq": 2}, uplink, openssl("psk-a"))
        wait_until(lambda: events.since(mark, "rpc"), 10, "the held RPC")
        wait_until(lambda: events.since(mark, "attributes"), 10, "the merged change")
        time.sleep(0.5)  # anything sent twice would show now
        assert events.since(mark, "attributes") == [{"a": 3, "b": 2}]
        assert events.since(mark, "rpc") == [{"id": 71, "method": "setValve",
                                              "params": {"open": True}}]
    finally:
        attributes.stop()
        rpc.stop()
    assert "observe of /rpc by Sleepy A ended" not in bridge.read_log()
    assert "observe of /attributes by Sleepy A ended" not in bridge.read_log()


def test_a_con_notification_over_dtls_is_withdrawn_when_the_device_falls_asleep(env):
    """The tests' DTLS client answers nothing while it sleeps: the notification it got just
    before its window ended is withdrawn from CoAPs' message layer (no retransmission), its
    session outlives the idle timeout, and the notification comes again on that session
    after its next request."""
    platform, bridge, port = env
    platform.set_attributes("Sleepy B", {}, {"s": 0})
    client = DtlsClient("127.0.0.1", bridge.dtls_port,
                        client_context(psk=("psk-b", KEYS["psk-b"])), timeout=10).handshake()
    try:
        first = client.exchange(raw.request(raw.GET, "/api/v1/psk-b/attributes", mid=1,
                                            token=b"\xb7", extra=[(OBSERVE, b"")]))
        assert first.code_str == "2.05"
        values = metrics(port)
        assert client.exchange(raw.request(raw.POST, "/api/v1/psk-b/telemetry", b'{"t": 0}',
                                           mid=2)).code_str == "2.01"
        platform.push_attributes("Sleepy B", {"a": 1})  # within the window: sent at once
        sent = client.recv(timeout=10)
        assert json.loads(sent.payload) == {"a": 1} and sent.mtype == raw.CON
        # not acknowledged: the device fell asleep
        wait_until(lambda: metrics(port)["coapbridge_notifications_withdrawn_total"] >
                   values["coapbridge_notifications_withdrawn_total"], 15, "the withdrawal")
        time.sleep(2 * IDLE_TIMEOUT)  # past the first retransmission's time, and idle
        after = metrics(port)
        assert after["coapbridge_coap_retransmissions_total"] == \
            values["coapbridge_coap_retransmissions_total"]
        assert after["coapbridge_dtls_idle_ended_total"] == \
            values["coapbridge_dtls_idle_ended_total"]  # its session is kept
        assert client.recv(timeout=0.2) is None and not client.closed_by_peer
        client.send(raw.request(raw.POST, "/api/v1/psk-b/telemetry", b'{"t": 1}', mid=3))
        got = [client.recv(timeout=10), client.recv(timeout=10)]
        again = next(m for m in got if m is not None and m.mtype == raw.CON)
        assert json.loads(again.payload) == {"a": 1} and again.token == b"\xb7"
        client.send(raw.Msg(raw.ACK, 0, again.mid))
    finally:
        client.close()


def test_a_psm_device_over_coap_tcp_gets_what_was_held_after_its_next_request(env):
    """RFC 8323 has no CON retransmission, so nothing is withdrawn: the notifications wait
    in the bridge while the device sleeps, and go on its connection after its next post."""
    platform, bridge, port = env
    base = "coap+tcp://127.0.0.1:%d" % bridge.tcp_port
    events = Events()
    attributes, rpc = observe_both(bridge, platform, "psm-t", "Sleepy T", events, base)
    try:
        for cycle in range(2):
            before = transitions(platform, "Sleepy T")
            post(bridge, "psm-t", {"seq": cycle}, base + "/api/v1/psm-t/telemetry")
            asleep(platform, "Sleepy T", before)
            mark = events.mark()
            platform.push_attributes("Sleepy T", {"a": cycle, "deleted": ["s"]})
            platform.push_attributes("Sleepy T", {"b": cycle})
            platform.send_rpc("Sleepy T", 80 + cycle, "step", {})
            time.sleep(1.0)  # asleep: nothing may reach it
            assert events.since(mark, "attributes") == [] and events.since(mark, "rpc") == []
            post(bridge, "psm-t", {"seq": 10 + cycle}, base + "/api/v1/psm-t/telemetry")
            wait_until(lambda: events.since(mark, "rpc"), 10, "the held RPC")
            wait_until(lambda: events.since(mark, "attributes"), 10, "the merged change")
            time.sleep(0.5)
            assert events.since(mark, "attributes") == [{"a": cycle, "b": cycle,
                                                         "deleted": ["s"]}]
            assert events.since(mark, "rpc") == [{"id": 80 + cycle, "method": "step",
                                                  "params": {}}]
    finally:
        attributes.stop()
        rpc.stop()
