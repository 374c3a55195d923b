"""The probes on the metrics port of the real bridge: /healthz and /readyz."""

from __future__ import annotations

import urllib.error
import urllib.request

from conftest import BridgeProcess, Mosquitto, free_ports, wait_until


def probe(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_readyz_follows_the_broker_and_healthz_answers_throughout(tmp_path):
    broker = Mosquitto(str(tmp_path))  # its port chosen, not started yet
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port})
    process.start(wait_mqtt=False)
    try:
        status, body = probe(port, "/readyz")
        assert (status, body) == (503, "not ready: mqtt not connected\n")
        assert probe(port, "/healthz") == (200, "ok\n")
        broker.start()
        wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 15, "readyz 200")
        broker.stop()
        wait_until(lambda: probe(port, "/readyz")[0] == 503, 15, "readyz 503 again")
        assert "mqtt not connected" in probe(port, "/readyz")[1]
        assert probe(port, "/healthz") == (200, "ok\n")
    finally:
        process.stop()
        broker.stop()
