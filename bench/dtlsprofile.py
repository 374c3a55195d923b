"""The DTLS transport's cost per full handshake, measured without sockets or a reactor.

``bench/dtlsload.py``'s pyOpenSSL clients talk to the real ``DtlsTransport`` (and the
real CoAP message layer behind it, and the registry's view over SQLite for the PSK) over
memory BIOs, a fake UDP port and a fake clock: every datagram is handed over by hand,
and the clock's due calls run after each (a reactor turn per datagram). Each round is
one full handshake from an address of its own, cookie round trip included, then one
CON GET answered 2.05. Under valgrind the count does not depend on what else the
machine runs:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python bench/dtlsprofile.py --kind psk -n 200
    python bench/dtlsprofile.py -n 200 --callgrind-report /tmp/cg.out [/tmp/cg2.out]

(``cg2.out`` from a run of ``2 n`` rounds: the difference is the whole round, both
sides.) The transport's share is everything called through ``itertools.starmap`` (only
the handing-over of a datagram to ``datagramReceived``, and the reactor turn after it,
is called that way; the warm-up rounds are not): the ``starmap_next`` inclusive count.
``--memory`` reports the RSS growth per idle session instead: ``-n`` rounds after the
warm-up, each leaving its server session established (the client's side is freed),
with its entry in OpenSSL's session cache and in the resumption map; an upper bound of
the bridge's (which has its other state warmed up besides). ``--resume`` makes every round a resumption of the session of a first full handshake
(cookie round trip included). ``--profile`` prints a cProfile breakdown instead,
``--time`` the CPU µs per handshake, the transport's and in all (load-sensitive).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import itertools
import os
import pstats
import random
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from OpenSSL import SSL  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

import dtlsload  # noqa: E402
from bridge.coap.message import make_response  # noqa: E402
from bridge.settings import DtlsConfig  # noqa: E402
from bridge.dtls import records  # noqa: E402
from bridge.edge import coap as coap_edge  # noqa: E402
from bridge.edge import dtls as dtls_edge  # noqa: E402
from bridge.edge.datagram import DatagramDriver  # noqa: E402
from bridge.glue.lookup import RegistryView  # noqa: E402
from bridge.registry import Registry  # noqa: E402

PSK = ("bench-device", b"0123456789abcdef")
GET = bytes([0x40, 0x01, 0x12, 0x34, 0xB1, 0x78])  # CON GET /x, message id 0x1234


class FakeUdp:
    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class Rig:
    """The transport with its endpoint; ``kind`` "psk" or "ecdsa" (client certificate)."""

    def __init__(self, kind: str, directory: str) -> None:
        paths = dtlsload.write_certificates(directory)
        self.clock = Clock()
        self.clock.advance(1000)
        cfg = DtlsConfig(enabled=True, cert_file=paths["server"], key_file=paths["server_key"],
                         ca_file=paths["ca"], handshake_rate=1e9, handshake_burst=1e9,
                         max_sessions=1 << 20)
        # CoAPs' own message layer, driven as the bridge drives it
        self.coap = DatagramDriver(lambda request: make_response(69, b"ok", 0), self.clock,
                                   coap_edge.datagram_settings(0.5, 247))
        self.udp = FakeUdp()
        # the registry as the bridge reads it: SQLite, refreshed once per reactor turn
        self.registry = Registry(os.path.join(directory, "registry.db"))
        self.registry.add("bench device", "bench-token", "default", psk_identity=PSK[0],
                          psk_key=PSK[1])
        self.view = RegistryView(self.clock)
        self.view.attach(self.registry)
        self.dtls = dtls_edge.DtlsTransport(cfg, self.coap, self.clock, self.view.psk_key,
                                            random.Random(1).randbytes)
        self.dtls.transport = self.udp
        self.dtls.startProtocol()
        self.client = (dtlsload.ClientContext(psk=PSK) if kind == "psk" else
                       dtlsload.ClientContext(cert=paths["device"], key=paths["device_key"]))
        self._n = 0
        self.session: Any = None  # resume this session in every round (``--resume``)
        self.resumed = 0
        self.kind = kind
        self.marked = False  # warm-up rounds do not go through starmap

    def deliver(self, datagrams: List[bytes], addr: Tuple[str, int]) -> None:
        # one reactor turn per datagram (what a bridge that is not saturated sees)
        if not self.marked:
            for datagram in datagrams:
                self.dtls.datagramReceived(datagram, addr)
                self.clock.advance(0)
            return
        # through starmap: the one C function that marks the server's share (module doc)
        collections.deque(itertools.starmap(self._turn, [(d, addr) for d in datagrams]), 0)

    def _turn(self, datagram: bytes, addr: Tuple[str, int]) -> None:
        self.dtls.datagramReceived(datagram, addr)
        self.clock.advance(0)

    def replies(self) -> List[bytes]:
        sent, self.udp.sent = self.udp.sent, []
        return [d for d, _ in sent]

    @staticmethod
    def out(conn: SSL.Connection) -> List[bytes]:
        blob = b""
        while True:
            try:
                blob += conn.bio_read(65536)
            except SSL.WantReadError:
                break
        return records.datagrams(blob, 1200) if blob else []

    def round(self) -> SSL.Connection:
        """One full handshake (or a resumption of ``session``, cookie included either
        way) and one GET from a new address; returns the client's connection."""
        self._n += 1
        addr = ("10.%d.%d.%d" % (self._n >> 16 & 255, self._n >> 8 & 255, self._n & 255), 5683)
        conn = SSL.Connection(self.client.context, None)
        conn.set_connect_state()
        conn.set_ciphertext_mtu(1200)
        if self.session is not None:
            conn.set_session(self.session)
        for _ in range(8):
            try:
                conn.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            self.deliver(self.out(conn), addr)
            for datagram in self.replies():
                conn.bio_write(datagram)
            if done:
                break
        else:
            raise SystemExit("handshake %d did not finish" % self._n)
        conn.send(GET)
        self.deliver(self.out(conn), addr)
        for datagram in self.replies():
            conn.bio_write(datagram)
        answer = conn.recv(4096)
        if answer[1] != 69:
            raise SystemExit("no 2.05 to request %d" % self._n)
        if dtlsload.lib.SSL_session_reused(conn._ssl):
            self.resumed += 1
        conn.set_shutdown(SSL.SENT_SHUTDOWN)
        self.clock.advance(0.001)
        return conn


def run(kind: str, n: int, warm: int = 20, resume: bool = False) -> Rig:
    directory = tempfile.mkdtemp(prefix="dtlsprofile-")
    rig = Rig(kind, directory)
    first = rig.round()
    if resume:  # every round after this resumes the first full handshake's session
        rig.session = first.get_session()
    for _ in range(warm):
        rig.round()
    rig.marked = True
    rig.resumed = 0
    return rig


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory(rig: Rig, n: int) -> None:
    """RSS growth per established, idle server session over ``n`` more rounds."""
    gc.collect()
    rig_rss, established = rss_kib(), rig.dtls.server.sessions_established
    for _ in range(n):
        rig.round()
    gc.collect()
    grown = rss_kib() - rig_rss
    sessions = rig.dtls.server.sessions_established - established
    print("%s: %d idle sessions, RSS +%d KiB: %.1f KiB per session"
          % (rig.kind, sessions, grown, grown / max(1, sessions)))


def _counts(path: str) -> Tuple[int, int]:
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1)
                .replace(",", ""))
    match = re.search(r"^\s*([\d,]+) \([^)]*\)\s+\S*:starmap_next", text, re.M)
    return total, int(match.group(1).replace(",", "")) if match else 0


def callgrind_report(paths: List[str], n: int) -> None:
    """Instructions per handshake from callgrind's output of a run of ``n`` rounds (and,
    given a second file, of one of ``2 n`` rounds: the whole round's cost, both sides,
    is their difference)."""
    total, server = _counts(paths[0])
    print("callgrind, %d rounds (full handshake with cookie exchange + one GET each)" % n)
    print("  transport (inclusive under starmap_next): %.0f instructions per handshake"
          % (server / n))
    if len(paths) > 1:
        total2, _ = _counts(paths[1])
        whole = (total2 - total) / n
        print("  whole round, both sides: %.0f; the clients and the rig: %.0f"
              % (whole, whole - server / n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("psk", "ecdsa"), default="psk")
    parser.add_argument("-n", type=int, default=200, help="handshakes measured")
    parser.add_argument("--resume", action="store_true",
                        help="each round resumes the session of a first full handshake")
    parser.add_argument("--callgrind-report", metavar="FILE", nargs="+",
                        help="print the instructions per handshake from callgrind's output of "
                        "a run of N rounds (and optionally a second of 2 N)")
    parser.add_argument("--profile", action="store_true", help="cProfile breakdown")
    parser.add_argument("--memory", action="store_true",
                        help="RSS growth per idle session over -n more sessions")
    parser.add_argument("--time", action="store_true", help="µs per handshake, each side")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.callgrind_report:
        callgrind_report(args.callgrind_report, args.n)
        return
    rig = run(args.kind, args.n, resume=args.resume)
    if args.memory:
        memory(rig, args.n)
        return
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.n):
            rig.round()
        profiler.disable()
        stats = pstats.Stats(profiler).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        return
    if args.time:
        inside = [0.0]
        deliver = rig.deliver

        def timed(datagrams: List[bytes], addr: Tuple[str, int]) -> None:
            start = time.process_time()
            deliver(datagrams, addr)
            inside[0] += time.process_time() - start
        rig.deliver = timed  # type: ignore[assignment]
        start = time.process_time()
        for _ in range(args.n):
            rig.round()
        total = time.process_time() - start
        print("%s: %.0f µs per handshake in the transport, %.0f µs in all (CPU time)"
              % (args.kind, inside[0] / args.n * 1e6, total / args.n * 1e6))
        return
    for _ in range(args.n):
        rig.round()
    stats = rig.dtls.stats
    print("%s: %d full handshakes, %d resumed, %d hello_verify_sent"
          % (args.kind, stats["handshakes_full"], stats["handshakes_resumed"],
             stats["hello_verify_sent"]))
    if args.resume and rig.resumed != args.n:
        raise SystemExit("only %d of %d rounds resumed" % (rig.resumed, args.n))


if __name__ == "__main__":
    main()
