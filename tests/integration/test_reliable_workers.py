"""COAP_WORKERS=2 with coap+tcp and coaps+tcp: the supervisor's one listening socket per
port, accepted from by both workers (bridge/edge/shared_tcp.py).

Telemetry from many connections (raw RFC 8323 frames over TCP, libcoap's
coap-client-openssl over TLS) reaches both workers, every 2.01 reaches the platform; a
worker killed with SIGKILL ends only its own connections: those of the other worker go
on, and new connections are accepted and answered while it is down and after its
restart. Which worker holds a connection is read from /proc (the process whose
descriptors include the socket's inode).

Which worker accepts a connection is whichever calls ``accept`` first (one queue per port,
edge/shared_tcp.py): an idle machine may hand every connection of a row to one worker (a
CI run saw 30 of 30 go to worker 2). Where a test needs connections in both workers it
places them: with the other worker paused (SIGSTOP), the kernel's queue is read only by
the one that runs, which shows that each worker accepts from the shared socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

import dtlscerts
from conftest import Counting, free_ports, wait_until
from test_rfc8323 import csm_frame, decoded, read_frames, telemetry_frame
from test_workers import Workers, broker, run_twistd, samples  # noqa: F401 (broker: a fixture)

pytestmark = pytest.mark.integration
OPENSSL = shutil.which("coap-client-openssl")
DEVICES = [("Tcp worker dev %d" % n, "twdev%d" % n) for n in range(40)]


def reliable_workers(tmp_path, broker_port):
    ca = dtlscerts.ca()
    cert, key = dtlscerts.issue("localhost", ca, dns="localhost", ip="127.0.0.1").write(
        str(tmp_path), "bridge")
    ports = {"tcp": free_ports(), "tls": free_ports()}
    bridge = Workers(str(tmp_path), broker_port, dtls={"cert_file": cert, "key_file": key},
                     reliable={name: {"enabled": True, "bind_port": port}
                               for name, port in ports.items()})
    bridge.ports = ports
    for name, token in DEVICES:
        bridge.add_device(name, token)
    return bridge


def post(sock, token, seq):
    """Telemetry ``seq`` of ``token`` over an open connection; its answer's code."""
    sock.sendall(telemetry_frame(token, b'{"seq": %d}' % seq, bytes([seq % 250 + 1])))
    answers = [f for f in read_frames(sock, 1, 30) if f.code >> 5 != 7]
    return decoded(answers[0]).code if answers else None


def open_connection(bridge):
    """A coap+tcp connection with its CSMs exchanged."""
    sock = socket.create_connection(("127.0.0.1", bridge.ports["tcp"]), timeout=30)
    sock.sendall(csm_frame())
    assert [f.code for f in read_frames(sock, 1, 30)] == [0xE1]  # the bridge's CSM
    return sock


def placed(bridge, worker, count):
    """``count`` connections accepted by ``worker`` (1 or 2): the other worker is paused
    while they are opened, so only ``worker`` reads the port's queue."""
    other = bridge.pid(3 - worker)
    os.kill(other, signal.SIGSTOP)
    try:
        socks = [open_connection(bridge) for _ in range(count)]
    finally:
        os.kill(other, signal.SIGCONT)
    pids = {bridge.pid(1): 1, bridge.pid(2): 2}
    assert [pids.get(owner(sock, pids)) for sock in socks] == [worker] * count
    return socks


def owner(sock, pids):
    """The pid among ``pids`` whose descriptors hold the server side of ``sock``."""
    client = sock.getsockname()[1]
    server = sock.getpeername()[1]
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
            if (local, remote) == (server, client):
                inodes.add("socket:[%s]" % fields[9])
    for pid in pids:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes:
                    return pid
            except OSError:
                continue
    return None


def test_coap_tcp_connections_are_spread_over_both_workers_and_all_arrive(tmp_path, broker):
    platform = Counting(broker.port)
    bridge = reliable_workers(tmp_path, broker.port).start()
    try:
        wait_until(lambda: bridge.read_log().count("CoAP over coap+tcp listening") >= 2, 30,
                   "coap+tcp listening in both workers")
        socks = []  # all open at once, 20 accepted by each worker
        try:
            socks += placed(bridge, 1, len(DEVICES) // 2)
            socks += placed(bridge, 2, len(DEVICES) - len(socks))
            held = [1] * (len(DEVICES) // 2) + [2] * (len(DEVICES) - len(DEVICES) // 2)
            codes = [post(sock, token, 1) for sock, (_, token) in zip(socks, DEVICES)]
        finally:
            for sock in socks:
                sock.close()
        assert codes == [0x41] * len(DEVICES), codes
        acked = samples(bridge.metrics_port, "coapbridge_uplinks_acknowledged_total")
        assert acked["1"] == held.count(1) and acked["2"] == held.count(2), (acked, held)
        assert acked["1"] > 0 and acked["2"] > 0, acked  # both workers accepted some
        wait_until(lambda: not platform.missing({(name, 1) for name, _ in DEVICES}), 30,
                   "every device's telemetry on the platform")
    finally:
        bridge.stop()
        platform.close()


def test_coaps_tcp_with_libcoap_reaches_both_workers(tmp_path, broker):
    assert OPENSSL, "libcoap3-bin's coap-client-openssl is missing (make test installs it)"
    platform = Counting(broker.port)
    bridge = reliable_workers(tmp_path, broker.port).start()
    try:
        wait_until(lambda: bridge.read_log().count("CoAP over coaps+tcp listening") >= 2, 30,
                   "coaps+tcp listening in both workers")
        # a process (a connection) each: 4 while only worker 1 runs, 4 while only worker 2
        # does (whichever worker calls accept first gets a connection: see placed())
        devices = DEVICES[:8]
        for n, (name, token) in enumerate(devices):
            other = bridge.pid(2 if n < 4 else 1)
            os.kill(other, signal.SIGSTOP)
            try:
                done = subprocess.run(
                    [OPENSSL, "-v", "6", "-m", "post", "-e", '{"seq": %d}' % n,
                     "coaps+tcp://127.0.0.1:%d/api/v1/%s/telemetry" % (bridge.ports["tls"],
                                                                       token)],
                    capture_output=True, timeout=30)
            finally:
                os.kill(other, signal.SIGCONT)
            out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            assert re.search(r"c:2\.01", out), out[-800:]
        acked = samples(bridge.metrics_port, "coapbridge_uplinks_acknowledged_total")
        assert (acked["1"], acked["2"]) == (4, 4), acked
        wait_until(lambda: not platform.missing({(name, n)
                                                 for n, (name, _) in enumerate(devices)}), 30,
                   "every device's telemetry on the platform")
    finally:
        bridge.stop()
        platform.close()


def test_a_killed_worker_ends_only_its_connections_and_new_ones_are_accepted(
        tmp_path, broker):
    platform = Counting(broker.port)
    bridge = reliable_workers(tmp_path, broker.port).start()
    socks = []
    try:
        wait_until(lambda: bridge.read_log().count("CoAP over coap+tcp listening") >= 2, 30,
                   "coap+tcp listening in both workers")
        socks += placed(bridge, 1, 5)
        socks += placed(bridge, 2, 5)
        held = [1] * 5 + [2] * 5
        victim = bridge.pid(1)
        os.kill(victim, signal.SIGKILL)
        # while worker 1 is down (restarted after 1 s) and after: new connections answered
        fresh = open_connection(bridge)
        assert post(fresh, DEVICES[39][1], 7) == 0x41
        fresh.close()
        for sock, worker, (name, token) in zip(socks, held, DEVICES):
            if worker == 2:  # worker 2's connections go on as before
                assert post(sock, token, 2) == 0x41, name
            else:  # worker 1's ended with it
                sock.settimeout(30)
                assert sock.recv(1) == b"", name
        wait_until(lambda: bridge.starts(1) >= 2, 30, "worker 1 restarted")
        bridge.wait_ready()
        after = [open_connection(bridge) for _ in range(10)]
        try:
            assert [post(sock, DEVICES[30 + n][1], 3) for n, sock in enumerate(after)] == \
                [0x41] * 10
        finally:
            for sock in after:
                sock.close()
        acked = {(name, 2) for worker, (name, _) in zip(held, DEVICES) if worker == 2}
        acked |= {(DEVICES[39][0], 7)} | {(DEVICES[30 + n][0], 3) for n in range(10)}
        wait_until(lambda: not platform.missing(acked), 30, "every 2.01's telemetry")
        assert "Worker 1 ended (killed by signal 9); restarting it in 1.0 s" in bridge.read_log()
    finally:
        for sock in socks:
            sock.close()
        bridge.stop()
        platform.close()


def test_the_supervisor_refuses_a_taken_tcp_port_with_one_line(tmp_path):
    bridge = reliable_workers(tmp_path, free_ports())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", bridge.ports["tcp"]))
        holder.listen(1)
        done = run_twistd(bridge.config, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "coapbridge: cannot listen for coap+tcp on TCP 127.0.0.1 port %d" % bridge.ports["tcp"])
    assert "Worker 1" not in done.stdout and "Traceback" not in done.stderr
