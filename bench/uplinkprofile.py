"""The cost of one telemetry uplink in the bridge's process, without sockets or a reactor.

The real UDP edge (``bridge.edge.coap``) over a fake UDP port and a ``Clock``, in front of
either the real glue, core and outbox (SQLite in a temporary directory, the registry's
view over SQLite; the MQTT link stays down, so nothing is published) or, with
``--engine``, a handler that answers 2.01 at once (the CoAP engine alone: datagram in,
2.01 out). 200 devices, each from a port of its own, post
``{"temperature":21.5,"humidity":40.5}`` as CON requests in reactor turns of 50 datagrams
(the clock's due calls, the outbox's group commit among them, run after each turn, and
the clock moves on 0.1 s: each device posts 2.5 times a second, within the shipped
``limits.device_rate``); every answer is checked to be 2.01. Under valgrind the count does not
depend on what else the machine runs:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/up.out \\
        python bench/uplinkprofile.py -n 4000
    python bench/uplinkprofile.py -n 4000 --callgrind-report /tmp/up.out

The measured turns (not the warm-up ones) are each called through ``itertools.starmap``,
so ``starmap_next``'s inclusive count is their cost alone, start-up and imports left
out. ``--profile`` prints a cProfile breakdown, ``--time`` the CPU µs per uplink
(load-sensitive).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import itertools
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock  # noqa: E402

from bridge import startup_checks  # noqa: E402
from bridge import runtime  # noqa: E402
from bridge.edge import coap as coap_edge  # noqa: E402

DEVICES = 200
TURN = 50  # datagrams per reactor turn
STEP = 0.1  # s between turns: each device posts 2.5 times a second, within limits.device_rate
BODY = b'{"temperature":21.5,"humidity":40.5}'


class FakeUdp:
    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def telemetry(token: str, mid: int) -> bytes:
    """CON POST /api/v1/{token}/telemetry (a 20-character token), a 2-byte CoAP token, the
    JSON body."""
    options = bytearray()
    previous = 0
    for segment in (b"api", b"v1", token.encode(), b"telemetry"):
        delta, previous = 11 - previous, 11
        if len(segment) < 13:
            options += bytes([(delta << 4) | len(segment)]) + segment
        else:  # a 20-character access token: one extension byte
            options += bytes([(delta << 4) | 13, len(segment) - 13]) + segment
    return (bytes([0x42, 0x02, mid >> 8, mid & 0xFF, mid >> 8, mid & 0xFF]) + bytes(options)
            + b"\xff" + BODY)


class Rig:
    def __init__(self, engine: bool, directory: str) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.tokens = ["bench-token-%08d" % n for n in range(DEVICES)]
        if engine:
            from bridge.core import codes
            handler = self._answer_created(codes.CREATED)
        else:
            handler = self._bridge(directory)
        self.coap = coap_edge.create_protocol(handler, self.clock, 0.5, 247)
        self.udp = FakeUdp()
        self.coap.transport = self.udp
        self.coap.startProtocol()
        self.mid = 0
        self.answered = 0

    @staticmethod
    def _answer_created(code: int) -> Any:
        from bridge.coap.message import make_response
        answer = make_response(code)
        return lambda request: answer

    def _bridge(self, directory: str) -> Any:
        from bridge.edge.outbox import Outbox
        from bridge.glue.bridge import Bridge
        from bridge.registry import Registry
        bridge = Bridge(startup_checks.load(None, {}), self.clock)
        registry = Registry(os.path.join(directory, "registry.sqlite3"))
        for n, token in enumerate(self.tokens):
            registry.add("bench device %03d" % n, token, "default")
        bridge.registry = registry
        bridge.outbox = Outbox(os.path.join(directory, "outbox.sqlite3"), synchronous="OFF")
        self.bridge = bridge
        return bridge.handle_coap

    def turn(self, first: int) -> None:
        """One reactor turn: ``TURN`` uplinks from devices ``first``, ``first + 1``, ..."""
        receive = self.coap.datagramReceived
        for n in range(first, first + TURN):
            device = n % DEVICES
            self.mid = (self.mid + 1) & 0xFFFF
            receive(telemetry(self.tokens[device], self.mid), ("10.1.%d.%d" % (device >> 8,
                                                                             device & 255),
                                                                5683))
        self.clock.advance(0)  # the end of the turn: the group commit, the answers
        self.clock.advance(STEP)

    def check(self) -> None:
        for data, _ in self.udp.sent:
            if data[1] != 65:  # 2.01
                raise SystemExit("answer %d.%02d, not 2.01" % (data[1] >> 5, data[1] & 31))
        self.answered += len(self.udp.sent)
        self.udp.sent.clear()

    def run(self, n: int, marked: bool) -> None:
        firsts = [(first,) for first in range(0, n, TURN)]
        if marked:  # through starmap: the one C function that marks the measured turns
            collections.deque(itertools.starmap(self.turn, firsts), 0)
        else:
            for (first,) in firsts:
                self.turn(first)
        self.check()


def rig(engine: bool, warm: int = 1000) -> Rig:
    runtime.tune_gc()
    made = Rig(engine, tempfile.mkdtemp(prefix="uplinkprofile-"))
    made.run(warm, marked=False)
    made.answered = 0
    runtime.freeze_startup_objects()
    return made


def callgrind_report(path: str, n: int) -> None:
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    match = re.search(r"^\s*([\d,]+) \([^)]*\)\s+\S*:starmap_next", text, re.M)
    if match is None:
        raise SystemExit("no starmap_next in %s" % path)
    count = int(match.group(1).replace(",", ""))
    print("callgrind, %d uplinks: %.0f instructions per uplink" % (n, count / n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=4000, help="uplinks measured (turns of 50)")
    parser.add_argument("--engine", action="store_true",
                        help="the CoAP engine alone: a handler that answers 2.01 at once")
    parser.add_argument("--callgrind-report", metavar="FILE",
                        help="print the instructions per uplink from callgrind's output")
    parser.add_argument("--profile", action="store_true", help="cProfile breakdown")
    parser.add_argument("--time", action="store_true", help="CPU µs per uplink")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.callgrind_report:
        callgrind_report(args.callgrind_report, args.n)
        return
    made = rig(args.engine)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        made.run(args.n, marked=False)
        profiler.disable()
        stats = pstats.Stats(profiler).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        return
    start = time.process_time()
    made.run(args.n, marked=True)
    spent = time.process_time() - start
    if made.answered != args.n:
        raise SystemExit("%d answers to %d uplinks" % (made.answered, args.n))
    if args.time:
        print("%.1f µs per uplink (CPU time)" % (spent / args.n * 1e6))
    else:
        print("%d uplinks answered 2.01" % made.answered)


if __name__ == "__main__":
    main()
