"""The cost of one telemetry uplink on the bridge's whole path, without a network or a reactor.

The whole path: the datagram in, through the real UDP edge (``bridge.edge.coap``), the
glue, the core and the SQLite outbox (the group commit, then the 2.01 out), the gateway
publish through the real ``MqttLink`` and paho (the MQTT packet encoded and written to a
socket), the broker's PUBACK read back by paho, and the outbox row deleted in the next
commit. The clock is a ``MemoryReactorClock``; the broker is a stand-in on the other end
of a socket pair that answers CONNECT, SUBSCRIBE and each QoS 1 PUBLISH; the registry is
the SQLite one, the outbox a file in a temporary directory with the shipped
``outbox.synchronous`` (FULL: the sync to disk is the kernel's work, which callgrind does
not count). ``--engine`` puts a handler that
answers 2.01 at once in place of the glue (the CoAP engine alone: datagram in, 2.01 out).

200 devices, each from a port of its own, post ``{"temperature":21.5,"humidity":40.5}``
(Content-Format JSON, a 20-character access token in the path) as CON requests in reactor
turns of 50 datagrams. A turn: the datagrams, the turn's end (the uplinks in bulk to the
core, the group commit, the answers, the publish and its write), then -- not measured --
the broker reads the publishes and writes their PUBACKs, then -- measured -- paho reads
them, the core settles the batch, the clock moves on 0.1 s (the deletes' commit, the
core's 0.25 s tick, the CoAP layer's timer): each device posts 2.5 times a second, within
the shipped ``limits.device_rate``. Every answer is checked to be 2.01 and every uplink to
be delivered and deleted. Under valgrind the count does not depend on what else the
machine runs:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/up.out \\
        python bench/uplinkprofile.py -n 4000
    python bench/uplinkprofile.py -n 4000 --callgrind-report /tmp/up.out

The measured parts of each turn are called through ``itertools.starmap``, so
``starmap_next``'s inclusive count is their cost alone: start-up, imports, the warm-up
turns, the datagrams' making and the broker stand-in are left out. ``--profile`` prints a
cProfile breakdown, ``--time`` the CPU µs per uplink (load-sensitive).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import itertools
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from bridge import runtime  # noqa: E402
from bridge import startup_checks  # noqa: E402
from bridge.edge import coap as coap_edge  # noqa: E402

DEVICES = 200
TURN = 50  # datagrams per reactor turn
STEP = 0.1  # s between turns: each device posts 2.5 times a second, within limits.device_rate
TICK = 0.25  # the core's tick (bridge/service.py's TICK_SECONDS)
BODY = b'{"temperature":21.5,"humidity":40.5}'


class FakeUdp:
    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def _option(delta: int, value: bytes) -> bytes:
    """One CoAP option (delta and length below 269)."""
    def nibble(n: int) -> Tuple[int, bytes]:
        return (n, b"") if n < 13 else (13, bytes([n - 13]))
    (d, dx), (length, lx) = nibble(delta), nibble(len(value))
    return bytes([d << 4 | length]) + dx + lx + value


def telemetry(token: str, mid: int) -> bytes:
    """CON POST /api/v1/{token}/telemetry, Content-Format JSON, a 2-byte CoAP token."""
    options = (_option(11, b"api") + _option(0, b"v1") + _option(0, token.encode())
               + _option(0, b"telemetry") + _option(1, b"\x32"))
    return (bytes([0x42, 0x02, mid >> 8, mid & 0xFF, mid >> 8, mid & 0xFF]) + options
            + b"\xff" + BODY)


class Broker:
    """The broker's end of the socket pair: CONNACK, SUBACK and a PUBACK for every QoS 1
    PUBLISH, in MQTT 5 or 3.1.1 (not part of the measured path)."""

    def __init__(self, sock: socket.socket, mqtt5: bool) -> None:
        self.sock = sock
        self.mqtt5 = mqtt5
        self.buffer = b""
        self.published = 0

    def serve(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buffer += data
        except BlockingIOError:
            pass
        out = bytearray()
        buffer, pos = self.buffer, 0
        while True:
            start = pos
            if len(buffer) < pos + 2:
                break
            first, pos = buffer[pos], pos + 1
            length, shift = 0, 0
            while pos < len(buffer):
                byte, pos = buffer[pos], pos + 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                pos = start
                break
            if len(buffer) < pos + length:
                pos = start
                break
            body, pos = buffer[pos:pos + length], pos + length
            out += self._answer(first, body)
        self.buffer = buffer[pos:]
        if out:
            self.sock.sendall(bytes(out))

    def _answer(self, first: int, body: bytes) -> bytes:
        kind = first >> 4
        if kind == 1:  # CONNECT
            return b"\x20\x03\x00\x00\x00" if self.mqtt5 else b"\x20\x02\x00\x00"
        if kind == 8:  # SUBSCRIBE: granted QoS 1
            return (b"\x90\x04" + body[:2] + b"\x00\x01") if self.mqtt5 \
                else (b"\x90\x03" + body[:2] + b"\x01")
        if kind == 3 and (first >> 1) & 3 == 1:  # PUBLISH, QoS 1
            topic_length = (body[0] << 8) | body[1]
            self.published += 1
            return b"\x40\x02" + body[2 + topic_length:4 + topic_length]
        if kind == 12:  # PINGREQ
            return b"\xd0\x00"
        return b""


class Rig:
    def __init__(self, engine: bool, directory: str) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.tokens = ["bench-token-%08d" % n for n in range(DEVICES)]
        self.engine = engine
        if engine:
            from bridge.core import codes
            handler = self._answer_created(codes.CREATED)
        else:
            handler = self._bridge(directory)
        self.coap = coap_edge.create_protocol(handler, self.clock, 0.5, 247,
                                              callback_handler=not engine)
        self.udp = FakeUdp()
        self.coap.transport = self.udp
        self.coap.startProtocol()
        if not engine:
            self.bridge.transports.join(tuple, self.coap)  # as bridge/listeners.py does
            self._connect()
        self.mid = 0
        self.answered = 0
        self.next_first = 0

    @staticmethod
    def _answer_created(code: int) -> Any:
        from bridge.coap.message import make_response
        answer = make_response(code)
        return lambda request: answer

    def _bridge(self, directory: str) -> Any:
        from bridge.edge.outbox import Outbox
        from bridge.glue.bridge import Bridge
        from bridge.registry import Registry
        config = startup_checks.load(None, {"DATA_DIR": directory})
        self.mqtt5 = config.mqtt.mqtt5
        bridge = Bridge(config, self.clock)
        registry = Registry(os.path.join(directory, "registry.sqlite3"))
        for n, token in enumerate(self.tokens):
            registry.add("bench device %03d" % n, token, "default")
        bridge.registry_view.attach(registry)
        bridge.outbox_commit.attach(Outbox(os.path.join(directory, "outbox.sqlite3"),
                                           config.outbox.synchronous))
        bridge.outbox_commit.restore()
        self.ticker = LoopingCall(bridge.tick)  # the service's tick (bridge/service.py)
        self.ticker.clock = self.clock
        self.ticker.start(TICK, now=False)
        self.bridge = bridge
        return bridge.requests.handle  # as bridge/service.py listens

    def _connect(self) -> None:
        """The MQTT link on one end of a socket pair, the broker stand-in on the other: the
        connection as ``MqttLink`` gets it from its connector, then CONNECT/CONNACK and the
        subscriptions."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.broker = Broker(theirs, self.mqtt5)
        link = self.link = self.bridge.link
        link._running = True  # what start() sets before its connector runs
        link._hand_over(ours)
        for _ in range(3):
            self.clock.advance(0)
            self.broker.serve()
            link._read()
        if not link.connected:
            raise SystemExit("the MQTT link did not come up")

    def datagrams(self, first: int) -> List[Tuple[bytes, Tuple[str, int]]]:
        """The datagrams of the turn from device ``first`` on (made outside the count)."""
        made = []
        for n in range(first, first + TURN):
            device = n % DEVICES
            self.mid = (self.mid + 1) & 0xFFFF
            made.append((telemetry(self.tokens[device], self.mid),
                         ("10.1.%d.%d" % (device >> 8, device & 255), 5683)))
        return made

    def arrive(self, datagrams: List[Tuple[bytes, Tuple[str, int]]]) -> None:
        """Measured: the turn's datagrams, then its end (the group commit, the answers, the
        publish written to the broker's socket)."""
        receive = self.coap.datagramReceived
        for data, remote in datagrams:
            receive(data, remote)
        self.clock.advance(0)

    def settle(self) -> None:
        """Measured: the PUBACKs read, the turn after (the deletes' commit), the timers."""
        if not self.engine:
            self.link._read()
        self.clock.advance(STEP)

    def turn(self, measure: Callable[..., None]) -> None:
        measure(self.arrive, self.datagrams(self.next_first))
        self.next_first += TURN
        if not self.engine:
            self.broker.serve()
        measure(self.settle)

    def check(self) -> None:
        for data, _ in self.udp.sent:
            if data[1] != 65:  # 2.01
                raise SystemExit("answer %d.%02d, not 2.01" % (data[1] >> 5, data[1] & 31))
        self.answered += len(self.udp.sent)
        self.udp.sent.clear()

    def run(self, n: int, marked: bool) -> None:
        measure = _marked if marked else _plain
        for _ in range(0, n, TURN):
            self.turn(measure)
        self.check()

    def verify(self, n: int) -> None:
        """Every uplink answered 2.01, delivered, and its outbox row deleted."""
        if self.answered != n:
            raise SystemExit("%d answers to %d uplinks" % (self.answered, n))
        if self.engine:
            return
        stats = self.bridge.core.stats
        if stats["delivered"] != stats["acknowledged"]:
            raise SystemExit("%d of %d uplinks delivered" % (stats["delivered"],
                                                            stats["acknowledged"]))
        left, _ = self.bridge.outbox.stats()
        if left:
            raise SystemExit("%d rows left in the outbox" % left)


def _marked(function: Callable[..., None], *args: Any) -> None:
    """Through starmap: the one C function that marks the measured calls."""
    collections.deque(itertools.starmap(function, (args,)), 0)


def _plain(function: Callable[..., None], *args: Any) -> None:
    function(*args)


def rig(engine: bool, warm: int = 1000) -> Rig:
    runtime.tune_gc()
    made = Rig(engine, tempfile.mkdtemp(prefix="uplinkprofile-"))
    made.run(warm, marked=False)
    made.answered = 0
    if not engine:
        stats = made.bridge.core.stats
        stats["acknowledged"] = stats["delivered"] = 0
    runtime.freeze_startup_objects()
    return made


def callgrind_report(path: str, n: int, what: str = "uplink") -> None:
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    match = re.search(r"^\s*([\d,]+) \([^)]*\)\s+\S*:starmap_next", text, re.M)
    if match is None:
        raise SystemExit("no starmap_next in %s" % path)
    count = int(match.group(1).replace(",", ""))
    print("callgrind, %d %ss: %.0f instructions per %s" % (n, what, count / n, what))


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
    made.verify(args.n)
    if args.time:
        print("%.1f µs per uplink (CPU time, the broker stand-in included)"
              % (spent / args.n * 1e6))
    else:
        print("%d uplinks answered 2.01, delivered and deleted" % made.answered)


if __name__ == "__main__":
    main()
