"""Two bridges (twistd, the shipped defaults) share one PostgreSQL registry and one broker.

The device list is written by the real ``coapbridge devices`` command with
``REGISTRY_URL``; the bridges learn of each change by LISTEN/NOTIFY. Every wait
polls with a generous deadline (no fixed sleep): how fast a removal reaches both
is measured in docs/deployment.md, not asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, Platform, free_ports, wait_until

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "conf", "coapbridge.yaml")
BIN = os.path.dirname(sys.executable)
_mid = [20000]


def cli(url, tmp_path, *args):
    env = dict(os.environ, REGISTRY_URL=url, DATA_DIR=str(tmp_path / "cli-data"))
    done = subprocess.run([os.path.join(BIN, "coapbridge"), "--config", SHIPPED, *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def post(bridge, token, payload):
    """The CoAP code (``2.01``, ``4.01``...) of one telemetry POST to ``bridge``."""
    _mid[0] += 1
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        return client.exchange(raw.request(raw.POST, "/api/v1/%s/telemetry" % token,
                                            json.dumps(payload).encode(), mid=_mid[0],
                                            token=_mid[0].to_bytes(2, "big")), 5).code_str
    finally:
        client.close()


def ready(bridge):
    """(status, body) of the bridge's /readyz."""
    url = "http://127.0.0.1:%d/readyz" % bridge.metrics_port
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def delivered(platform, device, key):
    return any(key in entry["values"] for message in platform.received("v1/gateway/telemetry")
               for entry in message.get(device, []))


@pytest.fixture
def fleet(tmp_path, postgres):
    url = postgres.create_database()
    broker = Mosquitto(str(tmp_path)).start()
    bridges = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        port = free_ports()
        bridge = BridgeProcess(str(workdir), broker.port, registry={"url": url},
                               metrics={"port": port})
        bridge.metrics_port = port
        bridges.append(bridge)
    platform = Platform(broker.port)
    try:
        for bridge in bridges:
            bridge.start()
        yield url, bridges, platform, postgres
    finally:
        platform.close()
        for bridge in bridges:
            bridge.stop()
        broker.stop()
        if not os.path.exists(os.path.join(postgres.data, "postmaster.pid")):
            postgres.start()  # a failed test must not leave the session's server down


def test_a_device_added_by_the_cli_is_served_by_both_and_removed_refused_by_both(fleet,
                                                                               tmp_path):
    url, bridges, platform, _ = fleet
    for bridge in bridges:
        assert "Device registry postgresql://postgres:***@127.0.0.1" in bridge.read_log()
        assert "pg-test-secret" not in bridge.read_log()
        assert post(bridge, "tokS", {"early": 1}) == "4.01"
    cli(url, tmp_path, "devices", "add", "Shared 1", "--token", "tokS", "--type", "meter")
    for n, bridge in enumerate(bridges):
        wait_until(lambda: post(bridge, "tokS", {"v%d" % n: n}) == "2.01", 10,
                   "bridge %s to serve the new device" % "ab"[n])
        wait_until(lambda: delivered(platform, "Shared 1", "v%d" % n), 10, "its telemetry")
    assert "Shared 1" in cli(url, tmp_path, "devices", "list")
    cli(url, tmp_path, "devices", "remove", "Shared 1")
    for bridge in bridges:
        wait_until(lambda: post(bridge, "tokS", {"late": 1}) == "4.01", 10,
                   "the removed device to get 4.01")


def test_one_bridge_killed_the_other_keeps_serving(fleet, tmp_path):
    url, (first, second), platform, _ = fleet
    cli(url, tmp_path, "devices", "add", "Shared 2", "--token", "tokK")
    wait_until(lambda: post(second, "tokK", {"before": 1}) == "2.01", 10, "served")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert post(second, "tokK", {"after_kill": 1}) == "2.01"
    wait_until(lambda: delivered(platform, "Shared 2", "after_kill"), 10, "its telemetry")
    cli(url, tmp_path, "devices", "add", "Shared 3", "--token", "tokK3")
    wait_until(lambda: post(second, "tokK3", {"new": 1}) == "2.01", 10, "a new device served")


def test_the_registry_stopped_and_started_both_serve_throughout_and_recover(fleet, tmp_path):
    url, bridges, platform, postgres = fleet
    cli(url, tmp_path, "devices", "add", "Shared 4", "--token", "tokR")
    for bridge in bridges:
        wait_until(lambda: post(bridge, "tokR", {"up": 1}) == "2.01", 10, "served")
        wait_until(lambda: ready(bridge) == (200, "ready\n"), 15, "ready")
    postgres.stop()
    try:
        for n, bridge in enumerate(bridges):
            # serving its last copy: still ready, the loss reported
            wait_until(lambda: ready(bridge) == (200, "ready; degraded: registry not "
                                                      "reachable\n"),
                       30, "/readyz to say the registry is lost")
            assert post(bridge, "tokR", {"down%d" % n: n}) == "2.01"  # from the last copy
            assert post(bridge, "nobody", {"x": 1}) == "4.01"
            wait_until(lambda: delivered(platform, "Shared 4", "down%d" % n), 10, "delivered")
    finally:
        postgres.start()
    for bridge in bridges:
        wait_until(lambda: ready(bridge) == (200, "ready\n"), 60, "/readyz ready again")
        log = bridge.read_log()
        assert log.count("unreachable (") == 1 and log.count("reachable again") == 1, log
    cli(url, tmp_path, "devices", "add", "Shared 5", "--token", "tokR5")
    for bridge in bridges:
        wait_until(lambda: post(bridge, "tokR5", {"after": 1}) == "2.01", 10,
                   "a device added after the recovery served")
