"""#27.9: idle connections to the metrics port are bounded in time and number, so they never
take the descriptors CoAP needs: with 256 descriptors and 400 idle connections, /readyz
answers and a CoAP uplink is stored, on the shipped defaults."""

from __future__ import annotations

import os
import socket

import coapraw as raw
from conftest import BridgeProcess, free_ports, probe, wait_until

LIMIT = 256
IDLE = 400


def descriptors(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def test_idle_metrics_connections_never_starve_coap_of_descriptors(tmp_path, broker):
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port})
    process.add_device("Fd Dev", "tokFd")
    process.start(prefix=["prlimit", "--nofile=%d:%d" % (LIMIT, LIMIT), "--"])
    idle = []
    try:
        pid = process.proc.pid
        baseline = descriptors(pid)
        for _ in range(IDLE):  # connect, send nothing
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            idle.append(sock)
        # the probe gets in through them (it closes the longest-open idle one)
        status, body = probe(port, "/readyz")
        assert (status, body) == (200, "ready\n")
        client = raw.Client(process.host, process.coap_port)
        answer = client.exchange(raw.request(raw.POST, "/api/v1/tokFd/telemetry", b'{"fd": 1}',
                                             mid=1, token=b"fd"))
        assert answer.code_str == "2.01"
        client.close()
        # at most metrics.max_connections (32) of them were ever held
        assert descriptors(pid) <= baseline + 32 + 2
        # and those are closed after metrics.idle_timeout (10 s)
        wait_until(lambda: descriptors(pid) <= baseline + 1, 30, "the idle connections closed")
    finally:
        for sock in idle:
            sock.close()
        process.stop()
    log = process.read_log()
    assert "Too many open files" not in log and "EMFILE" not in log
    assert "Traceback" not in log
