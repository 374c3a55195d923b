"""The gateway connection: MQTT 5 and 3.1.1, broker restarts, a broker absent at start."""

from __future__ import annotations

import json

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, Platform, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(protocol="5", start_broker=True, **overrides):
        broker = Mosquitto(str(tmp_path))
        if start_broker:
            broker.start()
        bridge = BridgeProcess(str(tmp_path), broker.port, protocol=protocol, **overrides)
        bridge.add_device("Dev R", "tokenR", "meter")
        made.append((broker, bridge))
        return broker, bridge
    yield make
    for broker, bridge in made:
        bridge.stop()
        broker.kill()


_mid = [5000]


def post(bridge, payload, timeout=5.0):
    _mid[0] += 1
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        return client.exchange(raw.request(raw.POST, "/api/v1/tokenR/telemetry",
                                            json.dumps(payload).encode(), mid=_mid[0],
                                            token=_mid[0].to_bytes(2, "big")), timeout)
    finally:
        client.close()


def has_value(platform, key):
    return any(key in e["values"] for p in platform.received("v1/gateway/telemetry")
               for e in p.get("Dev R", []))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_uplinks_flow_on_both_protocol_versions(setup, protocol):
    broker, bridge = setup(protocol)
    bridge.start()
    platform = Platform(broker.port)
    try:
        assert post(bridge, {"proto": protocol}).code_str == "2.01"
        wait_until(lambda: has_value(platform, "proto"), what="telemetry")
        assert platform.received("v1/gateway/connect") == [{"device": "Dev R", "type": "meter"}]
    finally:
        platform.close()


def test_broker_restart_resends_connect_and_data_flows_again(setup):
    broker, bridge = setup()
    bridge.start()
    platform = Platform(broker.port)
    assert post(bridge, {"before": 1}).code_str == "2.01"
    wait_until(lambda: has_value(platform, "before"), what="first telemetry")
    platform.close()

    broker.kill()
    assert post(bridge, {"during": 1}).code_str == "2.01"  # stored in the outbox

    broker.start()
    platform = Platform(broker.port)
    try:
        bridge.wait_connected(2)
        # connected again and the stored uplink delivered without any new request
        platform.wait_for("v1/gateway/connect", lambda p: p == {"device": "Dev R", "type": "meter"})
        wait_until(lambda: has_value(platform, "during"), what="the stored telemetry")
        assert post(bridge, {"after": 1}).code_str == "2.01"
        wait_until(lambda: has_value(platform, "after"), what="telemetry after restart")
    finally:
        platform.close()


def test_broker_absent_at_start_then_appears(setup):
    broker, bridge = setup(start_broker=False)
    bridge.start(wait_mqtt=False)
    assert post(bridge, {"early": 1}).code_str == "2.01"
    platform = None
    try:
        broker.start()
        platform = Platform(broker.port)
        bridge.wait_connected(1)
        wait_until(lambda: has_value(platform, "early"), what="the buffered telemetry")
        assert post(bridge, {"late": 1}).code_str == "2.01"
        wait_until(lambda: has_value(platform, "late"), what="telemetry")
    finally:
        if platform is not None:
            platform.close()


def test_broker_that_never_answers_connect_is_retried_while_uplinks_are_stored(setup, tmp_path):
    """A TCP listener that accepts but never answers CONNECT: the bridge keeps retrying."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    bridge = BridgeProcess(str(tmp_path), port, mqtt={"connect_timeout": 0.5})
    bridge.add_device("Dev R", "tokenR")
    try:
        bridge.start(wait_mqtt=False)
        wait_until(lambda: bridge.read_log().count("Cannot connect to MQTT broker") >= 2, 10,
                   "two failed connection attempts")
        assert "timed out" in bridge.read_log()
        assert post(bridge, {"x": 1}).code_str == "2.01"
    finally:
        bridge.stop()
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_clean_shutdown_on_sigterm(setup):
    broker, bridge = setup()
    bridge.start()
    bridge.proc.terminate()
    # twistd re-raises the signal after its orderly shutdown, so the status is SIGTERM's
    assert bridge.proc.wait(10) in (0, -15)
    assert "Stopped" in bridge.read_log() and "Server Shut Down" in bridge.read_log()
    assert "Traceback" not in bridge.read_log()


def test_a_refused_connection_is_reported_at_once_and_retried_after_the_backoff(tmp_path):
    """Issue #16 item 4: nothing listens on the port. Each attempt used to wait for the whole
    connect timeout (10 s, the shipped default here) and log "timed out"."""
    from conftest import free_port
    bridge = BridgeProcess(str(tmp_path), free_port())  # backoff 0.2 s to 1 s
    bridge.add_device("Dev R", "tokenR")
    try:
        bridge.start(wait_mqtt=False)
        # five attempts: well inside one connect timeout if each is refused at once
        wait_until(lambda: bridge.read_log().count("connection refused") >= 5, 8,
                   "five refused connection attempts")
        log = bridge.read_log()
        assert "timed out" not in log
        assert log.count("Reconnecting to MQTT in") >= 4  # each refusal is followed by a backoff
    finally:
        bridge.stop()


# -- client ids (issue #16 item 8) ------------------------------------------------------

def test_two_bridges_with_the_default_client_id_both_stay_connected(tmp_path):
    """With one shared default id each connect threw the other off (37 reconnects in 25 s)."""
    import os
    import time
    broker = Mosquitto(str(tmp_path)).start()
    bridges = []
    try:
        for name in ("one", "two"):
            os.makedirs(str(tmp_path / name))
            bridges.append(BridgeProcess(str(tmp_path / name), broker.port).start())
        time.sleep(3)  # a window in which a shared id would have reconnected many times
        for bridge in bridges:
            log = bridge.read_log()
            assert bridge.connected_count() == 1 and "Lost the MQTT connection" not in log, log
        ids = [bridge.read_log().split("client id ", 1)[1].split(")", 1)[0] for bridge in bridges]
        assert ids[0] != ids[1] and all(i.startswith("coapbridge-") for i in ids)
    finally:
        for bridge in bridges:
            bridge.stop()
        broker.kill()


class FakeBroker:
    """Accepts MQTT 5 connections, answers CONNECT with CONNACK, then sends ``then`` and
    ends the connection; counts the connections."""

    def __init__(self, then: bytes, reset: bool = False):
        import socket
        import threading
        self.then = then
        self.reset = reset  # end with a TCP RST, before reading what the bridge sent
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import socket
        import struct
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    if conn.recv(1)[:1] != b"\x10":
                        continue
                    length, shift = 0, 0
                    while True:  # the remaining length, then the rest of CONNECT
                        byte = conn.recv(1)[0]
                        length |= (byte & 0x7F) << shift
                        shift += 7
                        if not byte & 0x80:
                            break
                    while length > 0:
                        length -= len(conn.recv(length))
                    conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted, no properties
                    self.connections += 1
                    conn.sendall(self.then)
                    if self.reset:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        continue
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(1024):  # until the bridge closes: no RST, which would
                        pass                # discard what we sent before the bridge reads it
                except (OSError, IndexError):
                    pass

    def close(self):
        self.stopping.set()
        self.thread.join()
        self.listener.close()


def test_session_taken_over_names_the_client_id_clash(tmp_path):
    """MQTT 5 DISCONNECT with reason 0x8E (ThingsBoard and newer brokers send it to the old
    client when another connects with its id; mosquitto 2.0.11 just closes the socket)."""
    broker = FakeBroker(b"\xe0\x02\x8e\x00")
    bridge = BridgeProcess(str(tmp_path), broker.port)
    try:
        bridge.start(wait_mqtt=False)
        wait_until(lambda: "session taken over" in bridge.read_log(), 10, "the lost connection")
        line = next(l for l in bridge.read_log().splitlines() if "session taken over" in l)
        assert "another client connected with the same client id coapbridge-" in line
    finally:
        bridge.stop()
        broker.close()


def test_connections_lost_right_after_connack_suggest_a_shared_client_id(tmp_path):
    """What two bridges with one id see on a broker that sends no reason (mosquitto 2.0)."""
    broker = FakeBroker(b"")  # CONNACK, then the connection closes
    bridge = BridgeProcess(str(tmp_path), broker.port)
    try:
        bridge.start(wait_mqtt=False)
        wait_until(lambda: "another client with the same client id" in bridge.read_log(), 15,
                   "the hint")
        lost = [l for l in bridge.read_log().splitlines() if "Lost the MQTT connection" in l]
        assert len(lost) >= 3 and "same client id" not in lost[0] + lost[1]  # not at once
        assert "3 connections in a row lost within 10 s of being accepted" in lost[2]
    finally:
        bridge.stop()
        broker.close()


def test_a_connection_reset_right_after_connack_is_retried(tmp_path):
    """The bridge wrote its SUBSCRIBEs from inside paho's CONNACK callback; a write that found
    the connection reset made paho take its callback lock again, and the bridge hung."""
    broker = FakeBroker(b"", reset=True)
    bridge = BridgeProcess(str(tmp_path), broker.port)
    try:
        bridge.start(wait_mqtt=False)
        wait_until(lambda: bridge.read_log().count("Lost the MQTT connection") >= 3, 10,
                   "three lost connections")
        bridge.proc.terminate()
        assert bridge.proc.wait(10) in (0, -15) and "Server Shut Down" in bridge.read_log()
    finally:
        bridge.stop()
        broker.close()
