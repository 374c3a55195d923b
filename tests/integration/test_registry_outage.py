"""The platform renames and deletes devices while the shared registry is away (#25.4).

Two bridges (twistd, the shipped defaults) on one mosquitto share one PostgreSQL
registry; the platform is a paho client publishing ThingsBoard's gateway RPCs, which
both bridges receive (the broker gives each subscriber its copy), so both journal
each change. The server is stopped with pg_ctl; while it is down each bridge serves
the changes from its journal; once it is back both journals are applied and the
registry, both bridges and the platform agree, each change applied exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from bridge.registry_pg import PgRegistry
from conftest import wait_until
from test_shared_registry import (BIN, SHIPPED, cli, delivered, fleet,  # noqa: F401 (fixture)
                                  post, ready)

pytestmark = pytest.mark.integration

NOTE = "platform changes waiting for the registry: %d"
LOST = "ready; degraded: registry not reachable"  # it serves its last copy: still ready


def gateway_rpc(platform, n, method, params):
    """The platform's RPC to the gateway, as ThingsBoard sends it."""
    platform.client.publish("v1/devices/me/rpc/request/%d" % n,
                            json.dumps({"id": n, "method": method, "params": params}),
                            qos=1).wait_for_publish(5)


def waiting(bridge):
    """``coapbridge_registry_changes_waiting`` on the bridge's metrics port."""
    url = "http://127.0.0.1:%d/metrics" % bridge.metrics_port
    with urllib.request.urlopen(url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("coapbridge_registry_changes_waiting "):
                return float(line.split()[1])
    raise AssertionError("no coapbridge_registry_changes_waiting")


def rows(url):
    """name -> deleted, and the platform_changes outcomes by change, from the registry."""
    registry = PgRegistry(url, "test")
    try:
        names = {entry.name: entry.deleted for entry in registry.entries()}
        outcomes = registry._run(lambda conn: conn.execute(
            "SELECT kind, name, coalesce(new_name, ''), outcome FROM platform_changes "
            "ORDER BY key").fetchall())
    finally:
        registry.close()
    by_change = {}
    for kind, name, new_name, outcome in outcomes:
        by_change.setdefault((kind, name, new_name), []).append(outcome)
    return names, {change: sorted(found) for change, found in by_change.items()}


def test_changes_made_while_the_registry_is_down_hold_at_once_and_reach_it_once(fleet,
                                                                               tmp_path):
    url, bridges, platform, postgres = fleet
    for name, token in (("Ren 1", "tokRen"), ("Del 1", "tokDel"), ("Chain", "tokChain")):
        cli(url, tmp_path, "devices", "add", name, "--token", token)
    for bridge in bridges:
        for token in ("tokRen", "tokDel", "tokChain"):
            wait_until(lambda: post(bridge, token, {"before": 1}) == "2.01", 10, "served")
        wait_until(lambda: ready(bridge) == (200, "ready\n"), 15, "ready")
    postgres.stop()
    try:
        for bridge in bridges:
            # a lost registry: reported, the bridge stays ready (it serves its last copy)
            wait_until(lambda: ready(bridge)[1].startswith(LOST), 30, "the registry lost")
        gateway_rpc(platform, 1, "gateway_device_renamed", {"Ren 1": "Ren 1 new"})
        gateway_rpc(platform, 2, "gateway_device_deleted", "Del 1")
        gateway_rpc(platform, 3, "gateway_device_renamed", {"Chain": "Chain 2"})
        gateway_rpc(platform, 4, "gateway_device_renamed", {"Chain 2": "Chain 3"})
        for n, bridge in enumerate(bridges):
            wait_until(lambda: ready(bridge) == (
                200, "%s\n%s\n" % (LOST, NOTE % 4)), 15,
                "four changes journaled")
            assert waiting(bridge) == 4
            # the bridge's own view has them already
            assert post(bridge, "tokDel", {"gone": 1}) == "4.01"
            assert post(bridge, "tokRen", {"down%d" % n: 1}) == "2.01"
            assert post(bridge, "tokChain", {"down%d" % n: 1}) == "2.01"
            wait_until(lambda: delivered(platform, "Ren 1 new", "down%d" % n), 10, "new name")
            wait_until(lambda: delivered(platform, "Chain 3", "down%d" % n), 10, "chain end")
        assert not any(delivered(platform, old, "down%d" % n) for old in ("Ren 1", "Chain",
                                                                         "Chain 2")
                       for n in (0, 1))
    finally:
        postgres.start()
    for bridge in bridges:
        wait_until(lambda: ready(bridge) == (200, "ready\n"), 60, "ready, the journal empty")
        assert waiting(bridge) == 0
    names, outcomes = rows(url)
    assert names == {"Ren 1 new": False, "Del 1": True, "Chain 3": False}
    # both bridges journaled all four: each change applied by one, found done by the other
    assert outcomes == {("rename", "Ren 1", "Ren 1 new"): ["applied", "unknown"],
                        ("delete", "Del 1", ""): ["applied", "unknown"],
                        ("rename", "Chain", "Chain 2"): ["applied", "unknown"],
                        ("rename", "Chain 2", "Chain 3"): ["applied", "unknown"]}
    summaries = []
    for n, bridge in enumerate(bridges):  # and after the registry's copy took over
        assert post(bridge, "tokDel", {"later": 1}) == "4.01"
        assert post(bridge, "tokRen", {"up%d" % n: 1}) == "2.01"
        wait_until(lambda: delivered(platform, "Ren 1 new", "up%d" % n), 10, "new name")
        log = bridge.read_log()
        assert "Traceback" not in log and "registry refused it" not in log, log
        summaries += [line.split("registry ", 1)[1] for line in log.splitlines()
                      if "journaled platform changes to the registry" in line]
    assert sorted(summaries) == ["(0 applied, 4 found done or gone, 0 refused)",
                                 "(4 applied, 0 found done or gone, 0 refused)"]


def test_changes_journaled_when_the_bridge_is_killed_are_applied_after_its_restart(
        fleet, tmp_path):
    url, (first, second), platform, postgres = fleet
    second.stop()  # one bridge only: the change reaches the registry from its journal
    cli(url, tmp_path, "devices", "add", "Kill 1", "--token", "tokKill")
    wait_until(lambda: post(first, "tokKill", {"before": 1}) == "2.01", 10, "served")
    postgres.stop()
    try:
        wait_until(lambda: ready(first)[1].startswith(LOST), 30, "the registry lost")
        gateway_rpc(platform, 7, "gateway_device_renamed", {"Kill 1": "Kill 2"})
        wait_until(lambda: ready(first)[1].endswith(NOTE % 1 + "\n"), 15, "journaled")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        postgres.start()
    assert rows(url)[0] == {"Kill 1": False}  # nothing reached the registry before the kill
    first.proc = None
    first.start()
    wait_until(lambda: rows(url)[0] == {"Kill 2": False}, 30, "the rename applied")
    wait_until(lambda: ready(first) == (200, "ready\n"), 30, "the journal empty")
    assert post(first, "tokKill", {"after": 1}) == "2.01"
    wait_until(lambda: delivered(platform, "Kill 2", "after"), 10, "the new name")
    log = first.read_log()
    assert "Platform changes waiting for the registry in %s: 1" % os.path.join(
        first.data_dir, "registry-journal.sqlite3") in log
    assert rows(url)[1] == {("rename", "Kill 1", "Kill 2"): ["applied"]}


def test_a_hung_registry_is_noticed_like_a_lost_one_and_the_bridge_recovers_by_itself(
        fleet, tmp_path):
    """SIGSTOP of every server process: the kernel still accepts connections and
    acknowledges packets, so only the bridge's own deadlines can notice."""
    url, (first, second), platform, postgres = fleet
    second.stop()
    cli(url, tmp_path, "devices", "add", "Hung 1", "--token", "tokHung")
    wait_until(lambda: post(first, "tokHung", {"before": 1}) == "2.01", 10, "served")
    wait_until(lambda: ready(first) == (200, "ready\n"), 15, "ready")
    postgres.freeze()
    try:
        started = time.monotonic()
        wait_until(lambda: ready(first) == (200, LOST + "\n"), 20,
                   "/readyz to report the hung registry")
        print("RESULT hung registry noticed after %.1f s" % (time.monotonic() - started))
        assert post(first, "tokHung", {"hung": 1}) == "2.01"  # from the last copy
        wait_until(lambda: delivered(platform, "Hung 1", "hung"), 10, "delivered meanwhile")
        env = dict(os.environ, REGISTRY_URL=url, DATA_DIR=str(tmp_path / "cli-data"))
        done = subprocess.run([os.path.join(BIN, "coapbridge"), "--config", SHIPPED, "devices",
                               "list"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        [line] = done.stderr.strip().splitlines()
        print("RESULT the CLI with the registry hung: %s" % line)
        assert line.startswith("coapbridge: cannot use the device registry postgresql://"
                               "postgres:***@127.0.0.1") and "timeout" in line, line
    finally:
        postgres.thaw()
    wait_until(lambda: ready(first) == (200, "ready\n"), 60, "/readyz ready again by itself")
    cli(url, tmp_path, "devices", "add", "Hung 2", "--token", "tokHung2")
    wait_until(lambda: post(first, "tokHung2", {"after": 1}) == "2.01", 10,
               "a device added after the thaw served")
    log = first.read_log()
    assert "Traceback" not in log, log
    assert log.count("unreachable (") == 1 and log.count("reachable again") == 1, log
