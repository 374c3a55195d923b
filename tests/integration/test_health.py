"""The probes on the metrics port of the real bridge: /healthz and /readyz.

An MQTT outage leaves the bridge ready (uplinks are stored and answered 2.01, and
delivered when the broker is back), reported in the body, the metrics and the log;
with HEALTH_READY_REQUIRES_MQTT=true it makes the bridge unready."""

from __future__ import annotations

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, free_ports, probe, wait_until

DEGRADED = (200, "ready; degraded: mqtt not connected\n")


def test_an_mqtt_outage_is_reported_but_the_bridge_stays_ready_and_stores(tmp_path):
    broker = Mosquitto(str(tmp_path))  # its port chosen, not started yet
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port})
    process.add_device("Health Dev", "tokHealth")
    process.start(wait_mqtt=False)
    try:
        wait_until(lambda: probe(port, "/readyz") == DEGRADED, 15, "readyz degraded")
        assert probe(port, "/healthz") == (200, "ok\n")
        assert "coapbridge_mqtt_connected 0.0" in probe(port, "/metrics")[1]
        assert "coapbridge_ready 1.0" in probe(port, "/metrics")[1]
        # what readiness promises: an uplink during the outage is stored and answered
        client = raw.Client(process.host, process.coap_port)
        answer = client.exchange(raw.request(raw.POST, "/api/v1/tokHealth/telemetry",
                                             b'{"h": 1}', mid=1, token=b"h1"))
        assert answer.code_str == "2.01"
        client.close()
        broker.start()
        wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 15, "readyz ready")
        broker.stop()
        wait_until(lambda: probe(port, "/readyz") == DEGRADED, 15, "readyz degraded again")
        assert probe(port, "/healthz") == (200, "ok\n")
    finally:
        process.stop()
        broker.stop()
    log = process.read_log()
    assert "Ready for devices, degraded: mqtt not connected (uplinks are stored and " \
           "answered; health.ready_requires_mqtt is off)" in log
    # each change said once: ready (degraded or not) as the broker came and went
    assert log.count("[coapbridge.health#info] Ready for devices") >= 2


def test_health_ready_requires_mqtt_makes_an_outage_unready(tmp_path):
    broker = Mosquitto(str(tmp_path))
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port},
                            health={"ready_requires_mqtt": "${HEALTH_READY_REQUIRES_MQTT:false}"})
    process.start(wait_mqtt=False, env={"HEALTH_READY_REQUIRES_MQTT": "true"})
    try:
        wait_until(lambda: probe(port, "/readyz") == (503, "not ready: mqtt not connected\n"),
                   15, "readyz 503")
        broker.start()
        wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 15, "readyz 200")
        broker.stop()
        wait_until(lambda: probe(port, "/readyz")[0] == 503, 15, "readyz 503 again")
    finally:
        process.stop()
        broker.stop()
    log = process.read_log()
    assert "[coapbridge.health#info] Ready for devices\n" in log
    assert "[coapbridge.health#warn] Not ready for devices: mqtt not connected\n" in log
