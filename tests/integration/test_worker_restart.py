"""COAP_WORKERS=2 across a worker's ``kill -9`` and restart, with the shipped defaults otherwise.

What a device sees when the worker serving it dies: its source endpoint stays on the same
worker (the supervisor holds the port's sockets, so the SO_REUSEPORT group never changes),
and its observe relations go on in the restarted worker (persisted at registration,
restored at start) with Observe numbers that stay newer (RFC 7641 §4.4), so real clients
(libcoap's ``coap-client-notls -s``, aiocoap) get the next attribute change and RPC
without doing anything; devices of the healthy worker are not disturbed at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import coapraw as raw
from conftest import Mosquitto, wait_until
from platform_sim import PlatformSim
from test_clients import LIBCOAP
from test_workers import Workers, probe, samples

pytestmark = pytest.mark.integration
HERE = os.path.dirname(os.path.abspath(__file__))


def totals(port, name):
    """{worker label: sum of metric ``name``'s samples} (labels other than worker summed)."""
    from prometheus_client.parser import text_string_to_metric_families
    status, text = probe(port, "/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                worker = sample.labels.get("worker")
                out[worker] = out.get(worker, 0) + sample.value
    return out


class Ports:
    """UDP sockets on 127.0.0.1, each a source endpoint whose worker is found by asking:
    a request from it, and which worker's ``coap_requests_total`` moved."""

    def __init__(self, bridge, count):
        self.bridge = bridge
        self.socks = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(10)
            self.socks.append(sock)
        self._mid = 0

    def port(self, n):
        return self.socks[n].getsockname()[1]

    def worker(self, n):
        """The worker that answers socket ``n`` now."""
        name = "coapbridge_coap_requests_total"
        before = totals(self.bridge.metrics_port, name)
        self._mid += 1
        request = raw.request(raw.GET, "/api/v1/no-such-token/attributes", mid=self._mid)
        sock = self.socks[n]
        sock.sendto(raw.encode(request), ("127.0.0.1", self.bridge.coap_port))
        answer = raw.decode(sock.recvfrom(2048)[0])
        assert answer.code_str == "4.01", answer.code_str

        def moved():
            after = totals(self.bridge.metrics_port, name)
            changed = [w for w in after if w in ("1", "2") and after[w] > before.get(w, 0)]
            return changed[0] if len(changed) == 1 else None
        return wait_until(moved, 10, "the request counted by one worker")

    def workers(self):
        return "".join(self.worker(n) for n in range(len(self.socks)))

    def release(self, n):
        """Close socket ``n`` and return its port, for a client to bind."""
        port = self.port(n)
        self.socks[n].close()
        return port

    def close(self):
        for sock in self.socks:
            sock.close()


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(str(tmp_path)).start()
    yield mosquitto
    mosquitto.kill()


def kill_and_restart(bridge, worker):
    victim = bridge.pid(worker)
    starts = bridge.starts(worker)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: bridge.starts(worker) > starts, 60, "worker %d restarted" % worker)
    assert bridge.pid(worker) != victim and bridge.proc.poll() is None
    bridge.wait_ready()


def test_a_restarted_worker_serves_the_same_source_ports_as_before(tmp_path, broker):
    """40 source ports: which worker answers each, before a kill -9 of worker 1 and after
    its restart. Each device must stay on its worker (a moved device of the healthy worker
    would send its ACKs to a worker that never sent it anything)."""
    bridge = Workers(str(tmp_path), broker.port).start()
    ports = Ports(bridge, 40)
    try:
        before = ports.workers()
        assert "1" in before and "2" in before, before  # all on one: a chance of 2**-39
        kill_and_restart(bridge, 1)
        after = ports.workers()
        moved = sum(1 for a, b in zip(before, after) if a != b)
        print("before %s\nafter  %s\nmoved %d of 40" % (before, after, moved))
        assert after == before
    finally:
        ports.close()
        bridge.stop()


class Observer:
    """A real client observing one device's /attributes or /rpc from a known source port:
    libcoap's ``coap-client-notls -s`` or aiocoap (aiocoap_observe.py); what it printed
    is read as it comes (a thread per client)."""

    def __init__(self, kind, bridge, token, feature, port, seconds=180):
        import threading
        self.kind, self.token, self.feature, self.port = kind, token, feature, port
        uri = "%s/api/v1/%s/%s" % (bridge.url, token, feature)
        if kind == "libcoap":
            # -w: a newline after each payload; -B: end at the duration in any case
            args = [LIBCOAP, "-m", "get", "-s", str(seconds), "-B", str(seconds), "-w",
                    "-p", str(port), uri]
        else:
            args = [sys.executable, os.path.join(HERE, "aiocoap_observe.py"), uri, "1000",
                    str(seconds), "--port", str(port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def payloads(self):
        """What it received, one entry per response or notification."""
        if self.kind == "libcoap":
            return list(self.lines)
        return [json.loads(line).get("payload", line) for line in list(self.lines)
                if line.startswith("{")]

    def saw(self, text):
        return any(text in payload for payload in self.payloads())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.reader.join(5)

    def __repr__(self):
        return "%s %s /%s from port %d: %r" % (self.kind, self.token, self.feature, self.port,
                                               self.lines)


KINDS = [("libcoap", "attributes"), ("libcoap", "rpc"), ("aiocoap", "attributes"),
         ("aiocoap", "rpc")]


def test_observers_of_a_killed_worker_get_the_next_change_and_rpc_from_its_successor(
        tmp_path, broker):
    """Worker 1 is killed with SIGKILL while devices observe /attributes and /rpc through
    both workers with libcoap and aiocoap; once the supervisor has restarted it, a shared
    attribute change and an RPC reach every observer (the restarted worker took its
    predecessor's relations over), and the observers of worker 2 never miss one."""
    platform = PlatformSim(broker.port)
    bridge = Workers(str(tmp_path), broker.port)
    devices = {}  # (worker, kind, feature) -> (name, token)
    for worker in "12":
        for kind, feature in KINDS:
            name, token = "Obs %s %s %s" % (worker, kind, feature), "obs%s%s%s" % (
                worker, kind[:3], feature[:3])
            bridge.add_device(name, token)
            platform.set_attributes(name, {}, {"step": 0, "unit": "C"})  # two: see platform_sim
            devices[(worker, kind, feature)] = (name, token)
    bridge.start()
    ports = Ports(bridge, 40)
    observers = []
    try:
        chosen = {"1": [], "2": []}  # source ports each worker answers
        for n in range(40):
            worker = ports.worker(n)
            if len(chosen[worker]) < len(KINDS):
                chosen[worker].append(n)
            if all(len(c) == len(KINDS) for c in chosen.values()):
                break
        assert all(len(c) == len(KINDS) for c in chosen.values()), chosen
        for worker in "12":
            for (kind, feature), n in zip(KINDS, chosen[worker]):
                name, token = devices[(worker, kind, feature)]
                observers.append((worker, name, Observer(kind, bridge, token, feature,
                                                         ports.release(n))))
        attrs = [(w, name, o) for w, name, o in observers if o.feature == "attributes"]
        rpcs = [(w, name, o) for w, name, o in observers if o.feature == "rpc"]

        def everyone(group, text, what):
            wait_until(lambda: all(o.saw(text) for _, _, o in group), 60,
                       "%s: %r" % (what, [o for _, _, o in group if not o.saw(text)]))
        everyone(attrs, '"step":0', "the first representation")
        wait_until(lambda: sum(totals(bridge.metrics_port, "coapbridge_observers").values())
                   == len(observers), 30, "every relation registered")
        for _, name, _ in rpcs:
            platform.send_rpc(name, 1, "before", {})
        for _, name, _ in attrs:
            platform.push_attributes(name, {"step": 1})
        everyone(attrs, '"step":1', "the change before the kill")
        everyone(rpcs, '"id":1', "the RPC before the kill")

        def connects(name):
            return sum(1 for p in platform.received("v1/gateway/connect") if p["device"] == name)
        victims = [name for worker, name, _ in observers if worker == "1"]
        before = {name: connects(name) for name in victims}
        os.kill(bridge.pid(1), signal.SIGKILL)
        healthy_attrs = [entry for entry in attrs if entry[0] == "2"]
        healthy_rpcs = [entry for entry in rpcs if entry[0] == "2"]
        for _, name, _ in healthy_attrs:  # while worker 1 is down (it restarts after 1 s)
            platform.push_attributes(name, {"step": "while worker 1 is down"})
        for _, name, _ in healthy_rpcs:
            platform.send_rpc(name, 10, "meanwhile", {})
        everyone(healthy_attrs, "while worker 1 is down", "worker 2's observers meanwhile")
        everyone(healthy_rpcs, '"id":10', "worker 2's RPC observers meanwhile")
        wait_until(lambda: bridge.starts(1) >= 2, 60, "worker 1 restarted")
        bridge.wait_ready()
        # its devices connected again on its gateway session (after its SUBSCRIBEs, on the
        # same connection: from now on the platform's pushes reach it)
        wait_until(lambda: all(connects(name) > before[name] for name in victims), 30,
                   "worker 1's devices connected again")

        for step, rpc_id in ((2, 2), (3, 3)):  # two in a row: nothing stuck behind the first
            for _, name, _ in attrs:
                platform.push_attributes(name, {"step": step})
            for _, name, _ in rpcs:
                platform.send_rpc(name, rpc_id, "after", {"step": step})
            everyone(attrs, '"step":%d' % step, "change %d after the restart" % step)
            everyone(rpcs, '"id":%d' % rpc_id, "RPC %d after the restart" % rpc_id)
        log = bridge.read_log()
        assert "Took over 4 observe relations" in log
        assert not any(o.saw("ended") for _, _, o in observers)
    finally:
        for _, _, observer in observers:
            observer.stop()
        print("\n".join(repr(o) for _, _, o in observers))
        ports.close()
        bridge.stop()
        platform.close()


def test_a_single_bridge_killed_and_started_again_keeps_its_observers(tmp_path, broker):
    """COAP_WORKERS=1: the same file, the same takeover, after a kill -9 of the bridge."""
    from conftest import BridgeProcess
    platform = PlatformSim(broker.port)
    bridge = BridgeProcess(str(tmp_path), broker.port, log_level="info")
    bridge.add_device("Single obs", "singleobs")
    platform.set_attributes("Single obs", {}, {"step": 0, "unit": "C"})
    bridge.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    observer = Observer("aiocoap", bridge, "singleobs", "attributes", port)
    try:
        wait_until(lambda: observer.saw('"step":0'), 30, "the first representation")
        bridge.proc.kill()
        bridge.proc.wait(10)
        platform.push_attributes("Single obs", {"step": 1})  # while no bridge runs
        bridge.start()
        wait_until(lambda: observer.saw('"step":1'), 30, "the change made while it was down")
        platform.push_attributes("Single obs", {"step": 2})
        wait_until(lambda: observer.saw('"step":2'), 30, "the next change")
        assert "Took over 1 observe relations" in bridge.read_log()
    finally:
        observer.stop()
        bridge.stop()
        platform.close()


def test_observers_are_told_to_register_again_when_the_worker_count_changes(tmp_path, broker):
    """2 workers stopped, then 1 process on the same DATA_DIR and port: each device's
    datagrams reach another socket now, so its relation cannot go on; the device gets a
    5.03 notification without Observe (RFC 7641 §4.2), which ends it on the client."""
    from conftest import BridgeProcess
    bridge = Workers(str(tmp_path), broker.port)
    bridge.add_device("Moved obs 1", "movedobs1")
    bridge.add_device("Moved obs 2", "movedobs2")
    bridge.start()
    ports = Ports(bridge, 2)
    observers = [Observer("libcoap", bridge, "movedobs1", "rpc", ports.release(0)),
                 Observer("aiocoap", bridge, "movedobs2", "rpc", ports.release(1))]
    single = None
    try:
        wait_until(lambda: sum(totals(bridge.metrics_port, "coapbridge_observers").values())
                   == 2, 30, "both relations registered")
        bridge.stop()
        single = BridgeProcess(str(tmp_path), broker.port, log_level="info",
                               coap={"bind_port": bridge.coap_port})
        single.start()
        wait_until(lambda: all(o.saw("register again") for o in observers), 30,
                   "both told: %r" % observers)
        libcoap, aiocoap = observers
        assert any(line.startswith("5.03") for line in libcoap.payloads()), libcoap
        told = [json.loads(line) for line in aiocoap.lines if '"5.03"' in line]
        assert told and told[0]["observe"] is None, aiocoap
        wait_until(lambda: aiocoap.proc.poll() is not None, 30, "aiocoap's observation ended")
        assert any("ended" in line for line in aiocoap.lines), aiocoap
        log = single.read_log()
        assert "its worker no longer exists" in log
        told = re.findall(r"Ended (\d) observe relations \(the bridge restarted: register "
                          r"again\): each device told with 5.03", log)
        assert sum(int(n) for n in told) == 2, log
        assert not [n for n in os.listdir(single.data_dir) if n.startswith("observers-w")]
    finally:
        for observer in observers:
            observer.stop()
        print("\n".join(repr(o) for o in observers))
        if single is not None:
            single.stop()
        bridge.stop()
