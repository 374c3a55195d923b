"""CoAP over TCP and TLS (RFC 8323) against UDP, in one run of one bridge.

    python bench/reliable.py [--devices 64] [--seconds 10] [--idle 5000] [--server-python PY]

Starts mosquitto and ``twistd -n coapbridge`` (pinned to CPU 0, the load on CPU 1)
with UDP, coap+tcp and coaps+tcp on, then measures:

* telemetry: ``--devices`` devices, each with ``--window`` POSTs in flight (a new one
  as soon as an answer arrives), for ``--seconds`` over each transport in turn: UDP
  (CON, answered piggybacked), TCP (one connection a device), TLS (the same over TLS
  1.3); 2.01 per second and the TCP/UDP and TLS/UDP ratios;
* memory per idle connection: the bridge's resident memory before and after
  ``--idle`` connections (each past the CSM exchange) are open, over TCP and TLS;
* connections accepted per second: ``--idle`` connections opened as fast as the
  client can, each counted once the bridge's CSM arrives.

Prints one JSON object; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from bridge.coap import signalling as sig  # noqa: E402
from bridge.coap.framing import StreamDecoder, encode  # noqa: E402
from procstat import cpu_seconds, free_port, rss_kib  # noqa: E402

CSM = encode(sig.CSM, b"", sig.csm_body(1152, False))


def options(token: str) -> bytes:
    """Uri-Path api/v1/TOKEN/telemetry, then the payload marker."""
    out = b"\xb3api\x02v1"
    out += bytes((len(token),)) + token.encode() if len(token) < 13 else \
        bytes((0x0D, len(token) - 13)) + token.encode()
    return out + b"\x09telemetry\xff"


class Flow:
    """One device's socket with ``window`` POSTs in flight; another goes per answer."""

    def __init__(self, sock: Any, token: str, kind: str, window: int):
        self.sock = sock
        self.kind = kind
        self.window = window
        self.body = options(token) + b'{"v": 1}'
        self.decoder = StreamDecoder(1 << 20)
        self.mid = 0
        self.done = 0
        self.other: Dict[int, int] = {}  # answers other than 2.01, by code
        if kind != "udp":
            sock.sendall(CSM)
        for _ in range(window):
            self.send()

    def send(self) -> None:
        self.mid = (self.mid + 1) & 0xFFFF
        token = struct.pack("!H", self.mid)
        if self.kind == "udp":
            self.sock.send(struct.pack("!BBH", 0x42, 0x02, self.mid) + token + self.body)
        else:
            self.sock.sendall(encode(0x02, token, self.body))

    def readable(self) -> None:
        if self.kind == "udp":
            data = self.sock.recv(2048)
            mtype, code = (data[0] >> 4) & 3, data[1]
            if mtype == 0:  # a separate CON response: acknowledge it
                self.sock.send(struct.pack("!BBH", 0x60, 0, struct.unpack("!H", data[2:4])[0]))
            if code:
                self.answered(code)
            return
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not data:
                raise ConnectionError("the bridge closed a connection")
            for frame in self.decoder.feed(data):
                if frame.code >> 5 != 7:
                    self.answered(frame.code)
            if self.kind == "tcp" or not self.sock.pending():
                return

    def answered(self, code: int) -> None:
        if code == 0x41:
            self.done += 1
        else:
            self.other[code] = self.other.get(code, 0) + 1
        self.send()


def rate(connect: Callable[[int], Any], kind: str, devices: int, window: int,
         seconds: float, pid: int) -> Dict[str, Any]:
    """2.01 per second with ``devices`` flows of ``window`` requests in flight, and the
    bridge's CPU time per 2.01 (steadier than a rate on a shared machine, and what
    bounds the rate once the bridge's core is busy)."""
    selector = selectors.DefaultSelector()
    flows = []
    for n in range(devices):
        sock = connect(n)
        flow = Flow(sock, "btok%d" % n, kind, window)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, flow)
        flows.append(flow)

    def run(duration: float) -> None:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                key.data.readable()

    run(min(3.0, seconds / 3))  # warm-up: devices connected upstream, caches warm
    start = sum(f.done for f in flows)
    began, cpu = time.monotonic(), cpu_seconds(pid)
    run(seconds)
    done = sum(f.done for f in flows) - start
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(pid) - cpu
    other: Dict[str, int] = {}
    for flow in flows:
        for code, count in flow.other.items():
            key = "%d.%02d" % (code >> 5, code & 31)
            other[key] = other.get(key, 0) + count
        selector.unregister(flow.sock)
        flow.sock.close()
    return {"per_s": done / elapsed, "cpu_us": 1e6 * cpu / max(done, 1),
            "other_answers": other}


def open_idle(connect: Callable[[int], Any], count: int) -> List[Any]:
    socks = []
    for n in range(count):
        sock = connect(n)
        sock.sendall(CSM)
        socks.append(sock)
    for sock in socks:  # each got the bridge's CSM: the bridge holds its connection
        data = b""
        while len(data) < 2:
            data += sock.recv(64)
    return socks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--server-python", default=sys.executable)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    work = tempfile.mkdtemp(prefix="reliable-bench-")
    import dtlscerts
    ca = dtlscerts.ca()
    cert, key = dtlscerts.issue("localhost", ca, ip="127.0.0.1").write(work, "bridge")
    ca_file = os.path.join(work, "ca.pem")
    with open(ca_file, "wb") as handle:
        handle.write(ca.pem())
    mqtt_port, udp_port, tcp_port, tls_port = free_port(), free_port(), free_port(), free_port()
    with open(os.path.join(work, "mosquitto.conf"), "w") as handle:
        handle.write("listener %d 127.0.0.1\nallow_anonymous true\n%s" % (
            mqtt_port, "user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {"coap": {"bind_address": "127.0.0.1", "bind_port": udp_port},
              "mqtt": {"host": "127.0.0.1", "port": mqtt_port}, "data_dir": work + "/data",
              "metrics": {"port": 0}, "log_level": "warn",
              # as bench/run.py: the bridge's own cost, not its rate limits
              "limits": {"device_rate": 0, "peer_rate": 0, "max_pending_per_peer": 1_000_000},
              "reliable": {"tcp": {"enabled": True, "bind_port": tcp_port},
                           "tls": {"enabled": True, "bind_port": tls_port},
                           "cert_file": cert, "key_file": key}}
    with open(os.path.join(work, "bridge.yaml"), "w") as handle:
        json.dump(config, handle)
    from bridge.registry import Registry
    registry = Registry(os.path.join(work, "data", "registry.sqlite3"))
    for n in range(args.devices):
        registry.add("bench %d" % n, "btok%d" % n, "default")
    registry.close()
    twistd = os.path.join(os.path.dirname(args.server_python), "twistd")

    def start_bridge() -> subprocess.Popen:
        proc = subprocess.Popen(["taskset", "-c", "0", twistd, "-n", "--pidfile=",
                                 "coapbridge", "--config", os.path.join(work, "bridge.yaml")],
                                cwd=work, stdout=open(os.path.join(work, "bridge.log"), "a"),
                                stderr=subprocess.STDOUT)
        time.sleep(4)
        return proc

    def stop_bridge(proc: subprocess.Popen) -> None:
        proc.terminate()
        proc.wait(30)

    client_tls = ssl.create_default_context(cafile=ca_file)

    def stream(port: int, n: int) -> socket.socket:
        # from 127.0.0.2-5 in turn: reliable.max_connections_per_address is 4096
        return socket.create_connection(("127.0.0.1", port),
                                        source_address=("127.0.0.%d" % (2 + n % 4), 0))

    def tcp(n: int = 0) -> socket.socket:
        return stream(tcp_port, n)

    def tls(n: int = 0) -> ssl.SSLSocket:
        return client_tls.wrap_socket(stream(tls_port, n), server_hostname="127.0.0.1")

    results: Dict[str, Any] = {"devices": args.devices, "window": args.window,
                               "seconds": args.seconds, "idle": args.idle}
    try:
        bridge = start_bridge()
        try:
            def udp(n: int) -> socket.socket:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.connect(("127.0.0.1", udp_port))
                return sock
            for name, connect in (("udp", udp), ("tcp", tcp), ("tls", tls)):
                measured = rate(connect, name, args.devices, args.window, args.seconds,
                                bridge.pid)
                results["%s_per_s" % name] = measured["per_s"]
                results["%s_cpu_us" % name] = measured["cpu_us"]
                if measured["other_answers"]:
                    results["%s_other_answers" % name] = measured["other_answers"]
        finally:
            stop_bridge(bridge)
        for name in ("tcp", "tls"):
            results["%s_over_udp" % name] = results["%s_per_s" % name] / results["udp_per_s"]
            # the rate ratio on a saturated core: UDP's CPU per request over this one's
            results["%s_over_udp_by_cpu" % name] = results["udp_cpu_us"] / \
                results["%s_cpu_us" % name]
        for name, connect in (("tcp", tcp), ("tls", tls)):
            bridge = start_bridge()  # a fresh one each: freed memory is not given back
            try:
                before = rss_kib(bridge.pid)
                began = time.monotonic()
                socks = open_idle(connect, args.idle)
                results["%s_accepted_per_s" % name] = args.idle / (time.monotonic() - began)
                time.sleep(2)
                results["%s_idle_kib_per_connection" % name] = \
                    (rss_kib(bridge.pid) - before) / args.idle
                for sock in socks:
                    sock.close()
            finally:
                stop_bridge(bridge)
        print(json.dumps(results, indent=1))
    finally:
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    main()
