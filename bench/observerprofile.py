"""Where the memory of an observing device goes, in process (issue #26.3).

``bench/run.py --only observers`` measures the bridge's RSS growth over 100,000 NON
observe registrations of ``/attributes``; this driver says what that memory is made of.
The rig of ``bench/uplinkprofile.py`` (the real UDP edge over a fake port, the glue, the
core, the SQLite registry and outbox, the real ``MqttLink`` and paho on a socket pair)
with a broker stand-in that also answers each ``v1/gateway/attributes/request`` as the
platform stand-in (``bench/fakeplatform.py answer``) does: ``{}``. ``-n`` devices, each
from an address of its own (``--peers`` to share fewer, as the end-to-end run's 64
sockets do), register in turns of 256; every registration must be answered 2.05 with an
Observe option. Then ``tracemalloc``'s growth by file (``--lines``: by line), once right
after the registrations and once two ``coap.exchange_lifetime``s later (the
registrations' deduplication entries gone: what an observing device costs for as long as
it observes). ``--rss`` measures the process's RSS growth instead, without tracemalloc
(which adds its own bookkeeping per block):

    python bench/observerprofile.py -n 100000
    python bench/observerprofile.py -n 100000 --rss

``--fanout``: then one shared-attribute push per device, the CPU µs per notification
(load-sensitive); under callgrind the fan-out's instructions per notification, which do
not depend on the machine's load (the pushes are called through ``itertools.starmap``, so
``starmap_next``'s inclusive count is the fan-out alone, the stand-in's packets and
reads included):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/fan.out \\
        python bench/observerprofile.py -n 2000 --fanout
    python bench/observerprofile.py -n 2000 --callgrind-report /tmp/fan.out
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import time
import json
import os
import sys
import tempfile
import tracemalloc
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import uplinkprofile as up  # noqa: E402

WINDOW = 256  # registrations per reactor turn (the end-to-end run's window)
PUSHES = 100  # shared-attribute pushes per reactor turn (MqttLink reads 100 packets a turn)


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class PlatformBroker(up.Broker):
    """The broker stand-in, also answering shared-attribute requests (QoS 0, ``{}``)."""

    def _answer(self, first: int, body: bytes) -> bytes:
        out = super()._answer(first, body)
        if first >> 4 == 3:
            topic_length = (body[0] << 8) | body[1]
            topic = body[2:2 + topic_length]
            if topic == b"v1/gateway/attributes/request":
                start = 2 + topic_length + ((first >> 1) & 3 and 2)
                if self.mqtt5:
                    start += 1 + body[start]  # properties (short)
                request = json.loads(body[start:])
                answer = json.dumps({"id": request["id"], "device": request["device"]})
                name = b"v1/gateway/attributes/response"
                packet = (len(name).to_bytes(2, "big") + name + (b"\x00" if self.mqtt5 else b"")
                          + answer.encode())
                out += b"\x30" + _length(len(packet)) + packet
        return out


def registration(token: str, mid: int, tag: int) -> bytes:
    """NON GET /api/v1/{token}/attributes with Observe 0 and a 4-byte CoAP token."""
    options = (up._option(6, b"") + up._option(5, b"api") + up._option(0, b"v1")
               + up._option(0, token.encode()) + up._option(0, b"attributes"))
    return bytes([0x54, 0x01, mid >> 8, mid & 0xFF]) + tag.to_bytes(4, "big") + options


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_rig(n: int) -> Any:
    up.DEVICES = n
    up.Broker = PlatformBroker  # type: ignore[misc]
    up.runtime.tune_gc()
    rig = up.Rig(False, tempfile.mkdtemp(prefix="observerprofile-"))
    return rig


def register_all(rig: Any, n: int, peers: int) -> None:
    receive = rig.coap.datagramReceived
    for first in range(0, n, WINDOW):
        for device in range(first, min(n, first + WINDOW)):
            peer = device % peers
            receive(registration(rig.tokens[device], device & 0xFFFF, device),
                    ("10.%d.%d.%d" % (peer >> 16, (peer >> 8) & 255, peer & 255), 5683))
        for _ in range(3):  # the attribute requests out, their answers in, the 2.05s out
            rig.clock.advance(0)
            rig.broker.serve()
            rig.link._read()
    for _ in range(50):  # what paho held back (its in-flight window) goes on
        rig.clock.advance(0)
        rig.broker.serve()
        rig.link._read()
    answered = sum(1 for data, _ in rig.udp.sent if data[1] == 0x45 and data[8] >> 4 == 6)
    if answered != n or len(rig.bridge.core.subscriptions) != n:
        raise SystemExit("%d of %d registrations answered 2.05, %d relations"
                         % (answered, n, len(rig.bridge.core.subscriptions)))
    rig.udp.sent.clear()


def expire(rig: Any) -> None:
    """Twice the exchange lifetime on, in the core's ticks: the registrations'
    deduplication entries are gone (they live one to two lifetimes, bridge/coap/dedup.py)."""
    lifetime = rig.bridge.config.coap.exchange_lifetime
    steps = int(2 * lifetime / up.TICK) + 8
    for _ in range(steps):
        rig.clock.advance(up.TICK)
        rig.broker.serve()
        rig.link._read()


def push_all(rig: Any, n: int) -> int:
    """The platform pushes one shared-attribute update per device (QoS 1, in turns of
    ``PUSHES``, what one read of the MQTT link takes); returns the notifications sent."""
    sent, turns, topic = 0, 0, b"v1/gateway/attributes"
    for first in range(0, n, PUSHES):
        out = bytearray()
        for device in range(first, min(n, first + PUSHES)):
            payload = json.dumps({"device": "bench device %03d" % device,
                                  "data": {"setpoint": 21}}).encode()
            mid = (device & 0xFFFF or 1).to_bytes(2, "big")
            packet = (len(topic).to_bytes(2, "big") + topic + mid
                      + (b"\x00" if rig.broker.mqtt5 else b"") + payload)
            out += b"\x32" + _length(len(packet)) + packet
        rig.broker.sock.sendall(bytes(out))
        want, got = sent + min(n, first + PUSHES) - first, 0
        while sent < want and got < 10 * PUSHES:  # reactor turns: a read, then the calls due
            rig.link._read()
            rig.clock.advance(0)
            rig.broker.serve()
            sent += len(rig.udp.sent)
            rig.udp.sent.clear()
            got += 1
        turns += got
    print("%d reactor turns (an MQTT read and the calls due) for %d pushes" % (turns, n))
    return sent


def by_key(before: Any, after: Any, key: str, n: int, top: int) -> List[Tuple[str, float]]:
    diffs = after.compare_to(before, key)
    rows = [(str(d.traceback[0]) if key == "lineno" else d.traceback[0].filename, d.size_diff / n)
            for d in diffs]
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def report(title: str, before: Any, after: Any, n: int, key: str, top: int) -> None:
    total = sum(d.size_diff for d in after.compare_to(before, "filename")) / n
    print("%s: %.0f bytes per observing device (tracemalloc)" % (title, total))
    root = os.path.dirname(HERE) + os.sep
    for name, size in by_key(before, after, key, n, top):
        if abs(size) >= 1:
            print("  %7.0f  %s" % (size, name.replace(root, "")))


def fanout(rig: Any, n: int, peers: int, profile: bool, top: int) -> None:
    register_all(rig, n, peers)
    profiler = cProfile.Profile() if profile else None
    start_cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    sent = sum(itertools.starmap(push_all, [(rig, n)]))  # see the docstring (callgrind)
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - start_cpu
    print("fan-out: %d notifications for %d pushes, %.1f µs of CPU each (the broker "
          "stand-in included)" % (sent, n, spent / max(1, sent) * 1e6))
    if profiler is not None:
        pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100_000,
                        help="observing devices (coap.max_observers, shipped: 100,000)")
    parser.add_argument("--peers", type=int, default=0,
                        help="addresses the devices share (default: one each)")
    parser.add_argument("--rss", action="store_true", help="RSS growth, no tracemalloc")
    parser.add_argument("--lines", action="store_true", help="by line, not by file")
    parser.add_argument("--fanout", action="store_true",
                        help="then one shared-attribute push per device: CPU µs per "
                        "notification (--profile: cProfile of the fan-out)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--callgrind-report", metavar="FILE",
                        help="print the instructions per notification from callgrind's "
                        "output of a --fanout run with the same -n")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    n, peers = args.n, args.peers or args.n
    if args.callgrind_report:
        up.callgrind_report(args.callgrind_report, n, "notification")
        return
    rig = make_rig(n)
    rig.bridge.registry.refresh()  # the registry's copy: a registered device's, not an observer's
    if args.fanout:
        fanout(rig, n, peers, args.profile, args.top)
        return
    if args.rss:
        start = rss_kib()
        register_all(rig, n, peers)
        registered = rss_kib()
        expire(rig)
        later = rss_kib()
        print("RSS per observing device: %.0f bytes after the registrations, %.0f once "
              "two exchange lifetimes passed" % ((registered - start) * 1024 / n,
                                                  (later - start) * 1024 / n))
        return
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    register_all(rig, n, peers)
    registered = tracemalloc.take_snapshot()
    expire(rig)
    later = tracemalloc.take_snapshot()
    key = "lineno" if args.lines else "filename"
    report("after the registrations", start, registered, n, key, args.top)
    report("two exchange lifetimes later", start, later, n, key, args.top)


if __name__ == "__main__":
    main()
