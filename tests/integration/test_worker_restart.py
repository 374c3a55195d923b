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
