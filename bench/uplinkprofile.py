"""One telemetry uplink's cost on the bridge's whole path, counted in instructions.

The real glue (``Bridge``), core, CoAP transport (``BridgeCoap``), SQLite registry and
outbox, with a fake clock and a fake MQTT link: each round is a reactor turn of
``--batch`` CON POSTs ``/api/v1/{token}/telemetry`` from 200 devices (one source
address and port each) handed to ``datagramReceived``, the turn's end (the outbox's
group commit and the 2.01s), then the publishes the core made acknowledged (PUBACK)
and the next turn's end (the outbox's deletes). Under valgrind the count does not
depend on what else the machine runs; the difference of two runs is the cost of the
uplinks the longer one adds, start-up excluded:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/up1.out \\
        python bench/uplinkprofile.py -n 200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/up2.out \\
        python bench/uplinkprofile.py -n 4200
    python bench/uplinkprofile.py --callgrind-report /tmp/up1.out /tmp/up2.out --diff 4000

``--time`` prints the CPU µs per uplink instead (load-sensitive).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock  # noqa: E402

from bridge import config as config_module  # noqa: E402
from bridge.edge import coap as coap_edge  # noqa: E402
from bridge.edge.outbox import Outbox  # noqa: E402
from bridge.glue.bridge import Bridge  # noqa: E402
from bridge.registry import Registry  # noqa: E402

DEVICES = 200
PAYLOAD = b'{"temperature":21.5,"humidity":40.5}'


class FakeUdp:
    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes, addr: Any) -> None:
        self.sent += 1


class FakeLink:
    """The MQTT link: every publish gets a mid; ``ack_all`` is the broker's PUBACKs."""

    connected = True
    failed_messages = 0

    def __init__(self) -> None:
        self.mids: List[int] = []
        self.next = 0

    def publish(self, topic: str, payload: bytes) -> int:
        self.next += 1
        self.mids.append(self.next)
        return self.next


def _option(delta: int, value: bytes) -> bytes:
    """One CoAP option (delta and length below 269)."""
    def nibble(n: int) -> Tuple[int, bytes]:
        return (n, b"") if n < 13 else (13, bytes([n - 13]))
    (d, dx), (l, lx) = nibble(delta), nibble(len(value))
    return bytes([d << 4 | l]) + dx + lx + value


def datagram(mid: int, token: bytes) -> bytes:
    """CON POST /api/v1/<token>/telemetry, Content-Format JSON (50), a 2-byte token."""
    header = bytes([0x42, 0x02, mid >> 8 & 255, mid & 255, mid >> 8 & 255, mid & 255])
    options = _option(11, b"api") + _option(0, b"v1") + _option(0, token) \
        + _option(0, b"telemetry") + _option(1, b"\x32")
    return header + options + b"\xff" + PAYLOAD


class Rig:
    def __init__(self, directory: str, batch: int) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        config = config_module.load(None, {"DATA_DIR": directory})
        self.bridge = bridge = Bridge(config, self.clock)
        bridge.registry = Registry(os.path.join(directory, "registry.sqlite3"))
        self.tokens = []
        for n in range(DEVICES):
            token = "bench-token-%03d" % n
            bridge.registry.add("bench device %d" % n, token, "default")
            self.tokens.append(token.encode())
        bridge.outbox = Outbox(os.path.join(directory, "outbox.sqlite3"), "normal")
        bridge.outbox_commit.restore()
        bridge.link = self.link = FakeLink()
        cfg = config.coap
        self.coap = coap_edge.create_protocol(bridge.requests.handle, self.clock,
                                              cfg.empty_ack_delay, cfg.exchange_lifetime,
                                              cfg.max_body)
        self.coap.transport = self.udp = FakeUdp()
        self.coap.startProtocol()
        bridge.coap = self.coap
        bridge.coap_listening = True
        bridge.link_up()
        self.batch = batch
        self.mid = 0
        self.answered = 0

    def turn(self) -> None:
        """One reactor turn of ``batch`` uplinks, their PUBACKs and the next turn."""
        receive = self.coap.datagramReceived
        for n in range(self.batch):
            self.mid = (self.mid + 1) & 0xFFFF
            device = self.mid % DEVICES
            receive(datagram(self.mid, self.tokens[device]), ("10.1.%d.%d" % (device >> 8,
                                                                              device & 255),
                                                             40000 + device))
        self.clock.advance(0)  # the group commit, the 2.01s
        mids, self.link.mids = self.link.mids, []
        for mid in mids:
            self.bridge.published(mid, 0)
        self.clock.advance(0.05)  # the deletes; 5 uplinks/s per device, below its rate limit
        self.bridge.tick()


def run(n: int, batch: int) -> Rig:
    rig = Rig(tempfile.mkdtemp(prefix="uplinkprofile-"), batch)
    for _ in range(n // batch):
        rig.turn()
    sent = rig.udp.sent
    stats = rig.bridge.core.stats
    if stats["acknowledged"] != n // batch * batch or sent < stats["acknowledged"]:
        raise SystemExit("only %d of %d uplinks acknowledged" % (stats["acknowledged"], n))
    if stats["delivered"] < stats["acknowledged"] - batch:
        raise SystemExit("only %d of %d delivered" % (stats["delivered"], n))
    return rig


def _total(path: str) -> int:
    text = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    return int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1)
               .replace(",", ""))


def callgrind_report(paths: List[str], diff: int) -> None:
    one, two = _total(paths[0]), _total(paths[1])
    print("callgrind: %d and %d instructions; %.1f k per uplink over the %d more"
          % (one, two, (two - one) / diff / 1000, diff))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="uplinks (a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=50, help="uplinks per reactor turn")
    parser.add_argument("--time", action="store_true", help="CPU µs per uplink")
    parser.add_argument("--callgrind-report", metavar="FILE", nargs=2)
    parser.add_argument("--diff", type=int, default=4000,
                        help="uplinks the second callgrind run has more than the first")
    args = parser.parse_args()
    if args.callgrind_report:
        callgrind_report(args.callgrind_report, args.diff)
        return
    if args.time:
        started = time.process_time()
        run(args.n, args.batch)
        print("%.1f µs per uplink (CPU, whole path)"
              % ((time.process_time() - started) / args.n * 1e6))
        return
    run(args.n, args.batch)


if __name__ == "__main__":
    main()
