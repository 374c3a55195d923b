"""Never lose an acknowledged uplink: link cuts, a killed bridge, and the counts to prove it.

Each test runs a steady CoAP load (several devices posting numbered telemetry),
injects a fault, and then checks that every (device, seq) that got 2.01
reached the platform. Duplicates are allowed (at-least-once; telemetry
carries its receipt timestamp, so a replay is idempotent on ThingsBoard),
losses are not. Each test prints a RESULT line with the counts.
"""

from __future__ import annotations

import signal
import time
from typing import Tuple

import pytest

from conftest import BridgeProcess, Counting, Mosquitto, free_port, wait_until
from loadgen import Load
from tcpproxy import TcpProxy

pytestmark = pytest.mark.integration
DEVICES = [("Load %d" % n, "load%d" % n) for n in range(6)]


def _bridge(workdir, mqtt_port, **overrides):
    bridge = BridgeProcess(workdir, mqtt_port, mqtt={"keepalive": 2, **overrides.pop("mqtt", {})},
                           log_level="info", **overrides)
    for name, token in DEVICES:
        bridge.add_device(name, token)
    return bridge


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(str(tmp_path)).start()
    yield mosquitto
    mosquitto.kill()


def test_link_cuts_under_load_lose_nothing(tmp_path, broker):
    platform = Counting(broker.port)
    proxy = TcpProxy(broker.port)
    bridge = _bridge(str(tmp_path), proxy.port).start()
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    try:
        for _ in range(2):
            time.sleep(2.0)
            proxy.cut()  # the upstream link dies; devices keep posting
            time.sleep(2.0)
            proxy.restore()
        time.sleep(1.5)
    finally:
        results = load.stop()
    try:
        wait_until(lambda: not platform.missing(results.acked), 30, "every acknowledged uplink")
    finally:
        report = platform.report("link cut twice for 2 s", results.acked, results.codes)
        bridge.stop()
        proxy.close()
        platform.close()
    assert report["lost"] == 0
    assert report["acknowledged"] > 500
    assert results.codes.get("5.03", 0) == 0  # the outbox took everything during the cuts


def test_bridge_killed_with_sigkill_loses_nothing_acknowledged(tmp_path, broker):
    platform = Counting(broker.port)
    bridge = _bridge(str(tmp_path), broker.port).start()
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    try:
        load.wait_acknowledged(150)
        bridge.proc.send_signal(signal.SIGKILL)
        bridge.proc.wait(10)
        time.sleep(0.5)  # the last answers of the killed process have arrived
        acked_by_first = load.acknowledged()
        bridge.start()  # same DATA_DIR, same port
        load.wait_acknowledged(150)  # from the restarted bridge (devices retry meanwhile)
    finally:
        results = load.stop()
    try:
        wait_until(lambda: not platform.missing(results.acked), 30, "every acknowledged uplink")
    finally:
        report = platform.report("bridge SIGKILLed and restarted", results.acked, results.codes)
        bridge.stop()
        platform.close()
    assert report["lost"] == 0
    assert acked_by_first >= 150  # the killed process had acknowledged uplinks
    assert report["acknowledged"] >= 300


def appear(broker: Mosquitto, port: int) -> Tuple[Counting, TcpProxy]:
    """The absent broker appears on ``port``, the bridge's, once the platform listens.

    With the bridge pointed at the broker's own port, the platform subscribed after the broker
    started, and the bridge, retrying every second at most, could connect first and deliver
    the backlog before the platform's subscription existed: the broker acknowledged every
    entry (so the bridge removed it, rightly) and had nobody to hand it to ("150 of 300
    acknowledged uplinks never reached the platform", the 150 stored before, under load).
    ThingsBoard is the broker and its own subscriber; here the stand-in platform must be."""
    broker.start()
    platform = Counting(broker.port)
    return platform, TcpProxy(broker.port, port=port)


def test_broker_absent_at_start_buffers_then_delivers_everything(tmp_path):
    broker = Mosquitto(str(tmp_path))
    port = free_port()  # the bridge's broker: nothing listens there until appear()
    bridge = _bridge(str(tmp_path), port).start(wait_mqtt=False)
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    platform = proxy = None
    try:
        load.wait_acknowledged(150)  # stored while the broker is absent
        platform, proxy = appear(broker, port)
        load.wait_acknowledged(150)
    finally:
        results = load.stop()
    try:
        wait_until(lambda: not platform.missing(results.acked), 30, "every acknowledged uplink")
    finally:
        report = platform.report("broker absent for the first 2 s", results.acked, results.codes)
        bridge.stop()
        platform.close()
        proxy.close()
        broker.kill()
    assert report["lost"] == 0 and report["acknowledged"] >= 300


def test_full_outbox_refuses_with_5_03_and_keeps_what_it_acknowledged(tmp_path):
    broker = Mosquitto(str(tmp_path))
    port = free_port()
    bridge = _bridge(str(tmp_path), port, outbox={"max_entries": 50}).start(wait_mqtt=False)
    load = Load(bridge.host, bridge.coap_port, DEVICES[:2], interval=0.005).start()
    time.sleep(2.0)
    results = load.stop()
    assert len(results.acked) == 50
    assert results.codes["5.03"] > 0
    log = bridge.read_log()
    # said once, not per request: the refusals, and readiness (a full outbox is not ready)
    assert log.count("devices get 5.03 until it drains") == 1
    assert log.count("Not ready for devices: outbox full (50 entries)") == 1
    platform, proxy = appear(broker, port)
    try:
        wait_until(lambda: not platform.missing(results.acked), 30, "the 50 stored uplinks")
    finally:
        platform.close()
        bridge.stop()
        proxy.close()
        broker.kill()


def test_sigterm_keeps_undelivered_uplinks_for_the_next_start(tmp_path):
    broker = Mosquitto(str(tmp_path))
    bridge = _bridge(str(tmp_path), broker.port).start(wait_mqtt=False)
    load = Load(bridge.host, bridge.coap_port, DEVICES[:2], interval=0.01).start()
    time.sleep(1.0)
    bridge.proc.terminate()
    bridge.proc.wait(10)
    results = load.stop()
    assert len(results.acked) > 20
    assert "uplinks kept in the outbox for the next start" in bridge.read_log()
    broker.start()
    platform = Counting(broker.port)
    try:
        bridge.start()
        wait_until(lambda: not platform.missing(results.acked), 30, "the stored uplinks")
    finally:
        platform.close()
        bridge.stop()
        broker.kill()
