"""What keeping observe relations across a restart costs (bridge/glue/relations.py).

The real core and relation keeper over a SQLite file in a temporary directory and a
``Clock``: ``-n`` devices register an observe of ``/rpc`` (each from a port of its
own), all in one reactor turn (one transaction), then a second process takes them over;
and ``--single`` registrations one per turn (one transaction each, the worst case). CPU
times, so load-sensitive: compare runs on one machine.

    python bench/relations.py -n 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from twisted.internet.task import Clock

from bridge import startup_checks
from bridge.coap.datagram import Observation
from bridge.core import codes
from bridge.core.actions import Device, Request
from bridge.core.session import GatewayCore
from bridge.edge import relations as files
from bridge.glue.relations import RelationKeeper

NOW = 1_700_000_000.0


class Transport:
    def end_observation(self, *args: object) -> None:
        raise AssertionError("nothing is ended in this benchmark")


def process(path: str, count: int) -> tuple:
    config = startup_checks.load_text("coap: {max_observers: %d}" % (count + 10), {})
    clock = Clock()
    clock.advance(NOW)
    devices = {"tok%d" % n: Device("Dev %d" % n, "default") for n in range(count)}
    names = {device.name: device for device in devices.values()}
    core = GatewayCore(config, devices.get)
    keeper = RelationKeeper(core, clock, names.get, lambda actions: None, path,
                            files.shape_of(1, "0.0.0.0", 5683))
    core.on_link_up(NOW)
    keeper.start(Transport())
    return core, clock, keeper


def register(core: GatewayCore, n: int) -> None:
    request = Request(n + 1, codes.GET, ("api", "v1", "tok%d" % n, "rpc"), observe=0,
                      token=b"\x01\x02", remote=("10.%d.%d.%d" % (n >> 16, (n >> 8) & 255,
                                                                 n & 255), 40000 + n % 20000),
                      observation=Observation(True, NOW))
    core.on_request(request, NOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000, help="relations")
    parser.add_argument("--single", type=int, default=2000,
                        help="registrations one per turn, for the cost of a transaction")
    args = parser.parse_args()
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "observers.sqlite3")
    core, clock, keeper = process(path, args.n)
    start = time.process_time()
    for n in range(args.n):
        register(core, n)
    registered = time.process_time()
    clock.advance(0)  # the end of the turn: one transaction
    written = time.process_time()
    keeper.stop()
    size = os.path.getsize(path)
    successor, _, taker = process(path, args.n)
    taken = time.process_time()
    print("%d relations: registration %.1f µs each in the core, written in one transaction "
          "in %.1f ms (%.1f µs each), %d bytes on disk (%.0f per relation); taken over by "
          "the next process (its core built too) in %.0f ms (%.1f µs each)" % (
              args.n, (registered - start) / args.n * 1e6, (written - registered) * 1e3,
              (written - registered) / args.n * 1e6, size, size / args.n,
              (taken - written) * 1e3, (taken - written) / args.n * 1e6))
    assert taker.restored == args.n
    taker.stop()
    path = os.path.join(directory, "single.sqlite3")
    core, clock, keeper = process(path, args.single)
    spent = 0.0
    for n in range(args.single):
        register(core, n)
        before = time.process_time()
        clock.advance(0)
        spent += time.process_time() - before
    keeper.stop()
    print("one registration per reactor turn: %.0f µs per transaction" % (
        spent / args.single * 1e6))


if __name__ == "__main__":
    main()
