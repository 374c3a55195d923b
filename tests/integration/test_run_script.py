"""``make run`` (scripts/run.sh): the broker it starts stops with the bridge; one it found
running is left alone. The script runs as make runs it, with the shipped configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import coapraw as raw
from conftest import Mosquitto, free_port, free_ports, port_open, wait_until

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def alive(pid):
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_script(tmp_path, mqtt_port):
    coap_port = free_ports()
    env = dict(os.environ, VENV=sys.prefix, DATA_DIR=str(tmp_path / "data"),
               MQTT_HOST="localhost", MQTT_PORT=str(mqtt_port), COAP_BIND_PORT=str(coap_port),
               COAP_BIND_ADDRESS="127.0.0.1", METRICS_PORT="0",
               BROKER_DIR=str(tmp_path / "broker"))
    log = tmp_path / "run.log"
    proc = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "run.sh")], cwd=REPO,
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    read = lambda: log.read_text(errors="replace")
    try:
        wait_until(lambda: "Connected to MQTT broker" in read() or proc.poll() is not None, 90,
                   "the bridge to connect")
        assert proc.poll() is None, read()
        token = (tmp_path / "data" / "demo-token").read_text().strip()
        client = raw.Client("127.0.0.1", coap_port)
        try:
            reply = client.exchange(raw.request(raw.POST, "/api/v1/%s/telemetry" % token,
                                                b'{"t": 21.5}', mid=7, token=b"\x07"), 10)
        finally:
            client.close()
        assert reply.code_str == "2.01"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, read


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_the_bridge_stops_and_then_the_broker_make_run_started(tmp_path, stop):
    mqtt_port = free_port()
    proc, read = run_script(tmp_path, mqtt_port)
    broker = int((tmp_path / "broker" / "mosquitto.pid").read_text())
    assert alive(broker) and port_open(mqtt_port)
    assert "it stops with the bridge" in read()
    if stop == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal signals its foreground group
    else:
        proc.terminate()  # kill, timeout: the script alone
    proc.wait(60)
    log = read()
    assert "[coapbridge.bridge#info] Stopped" in log, log
    assert "stopped the mosquitto this script started (pid %d)" % broker in log, log
    wait_until(lambda: not alive(broker), 10, "the broker to end")
    assert not port_open(mqtt_port) and "Traceback" not in log


def test_a_broker_that_was_already_running_is_left_running(tmp_path):
    broker = Mosquitto(str(tmp_path)).start()
    try:
        proc, read = run_script(tmp_path, broker.port)
        assert "an MQTT broker already listens" in read()
        proc.terminate()  # SIGTERM to the script alone: exec'd, it is the bridge
        proc.wait(60)
        assert "[coapbridge.bridge#info] Stopped" in read()
        assert broker.proc.poll() is None and port_open(broker.port)
    finally:
        broker.stop()
