"""A CoAP load generator over raw UDP: many source ports, windowed CON or NON, fixed rates.

One process, non-blocking sockets and epoll. Each socket keeps up to
``window`` requests outstanding (16-bit message IDs per socket: many sockets
keep deduplication honest at high rates). Every response's latency is
recorded; a request unanswered after ``timeout`` counts as lost (no
retransmission: the server's capacity is what is measured).

Against a loopback server each run sends from a loopback address of its own
(127.1.x.y). A server outlives many runs, and remembers (source, message ID)
for 247 s: were a later run's socket given a port an earlier run used (the
system reuses ports) its message IDs would repeat earlier ones, and the
server would rightly answer them as duplicates, from its cache, without
doing the work; the rate and the count of acknowledged requests would both
be wrong.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

CON, NON, ACK, RST = 0, 1, 2, 3


def _option(delta: int, value: bytes) -> bytes:
    def ext(n: int) -> Tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, struct.pack("!H", n - 269)
    d, dx = ext(delta)
    ln, lx = ext(len(value))
    return bytes([(d << 4) | ln]) + dx + lx + value


def encode_options(options: Sequence[Tuple[int, bytes]]) -> bytes:
    out, last = b"", 0
    for number, value in sorted(options, key=lambda o: o[0]):
        out += _option(number - last, value)
        last = number
    return out


def request_template(method: int, path: str, payload: bytes = b"",
                     extra: Sequence[Tuple[int, bytes]] = ()) -> bytes:
    """Everything after the 4-byte header and 2-byte token."""
    options = [(11, seg.encode()) for seg in path.strip("/").split("/")] + list(extra)
    body = encode_options(options)
    return body + (b"\xff" + payload if payload else b"")


@dataclass
class Result:
    duration: float = 0.0
    sent: int = 0
    answered: int = 0
    lost: int = 0
    codes: Counter = field(default_factory=Counter)
    latencies: List[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.answered / self.duration if self.duration else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


_runs = itertools.count()


def source_address(host: str) -> Optional[str]:
    """A loopback address no earlier run of this process sent from, for a loopback ``host``."""
    if not host.startswith("127."):
        return None
    n = next(_runs)
    return "127.1.%d.%d" % (n // 250 % 250, n % 250 + 1)


class _Sock:
    def __init__(self, addr: Tuple[str, int], index: int, source: Optional[str] = None):
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect(addr)
        self.mid = (index * 7919) & 0xFFFF
        self.outstanding: Dict[int, float] = {}


def run(host: str, port: int, templates: Sequence[bytes], duration: float, sockets: int = 32,
        window: int = 4, mtype: int = CON, method_code: int = 2, rate: Optional[float] = None,
        timeout: float = 2.0, progress: Optional[Callable[[float], None]] = None) -> Result:
    """Send requests built from ``templates`` (cycled) for ``duration`` seconds."""
    addr = (host, port)
    source = source_address(host)
    socks = [_Sock(addr, n, source) for n in range(sockets)]
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s.sock, selectors.EVENT_READ, s)
    result = Result()
    cycle = itertools.cycle(templates)
    first_byte = 0x40 | (mtype << 4) | 2
    start = time.perf_counter()
    end = start + duration
    interval = 1.0 / rate if rate else 0.0
    next_send = start
    last_progress = start

    def send(s: _Sock, now: float) -> None:
        s.mid = (s.mid + 1) & 0xFFFF
        header = struct.pack("!BBHH", first_byte, method_code, s.mid, s.mid)
        try:
            s.sock.send(header + next(cycle))
        except BlockingIOError:
            return
        s.outstanding[s.mid] = now
        result.sent += 1

    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for s in socks:
            if len(s.outstanding) >= window:
                continue
            if rate:
                if now < next_send:
                    break
                next_send += interval
                if next_send < now - 1.0:
                    next_send = now  # do not burst to catch up after a stall
            send(s, now)
        wait = 0.0005 if rate else 0.01
        for key, _ in selector.select(wait):
            s = key.data
            while True:
                try:
                    data = s.sock.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(data) < 4:
                    continue
                mtype_in = (data[0] >> 4) & 3
                mid = struct.unpack("!H", data[2:4])[0]
                if mtype_in in (ACK, RST) and data[1] == 0:
                    continue  # empty ACK: the answer follows
                if mtype_in == CON:
                    s.sock.send(struct.pack("!BBH", 0x60, 0, mid))
                    tkl = data[0] & 0x0F
                    mid = struct.unpack("!H", data[4:6])[0] if tkl == 2 else mid
                elif mtype_in == NON:
                    tkl = data[0] & 0x0F
                    mid = struct.unpack("!H", data[4:6])[0] if tkl == 2 else mid
                sent_at = s.outstanding.pop(mid, None)
                if sent_at is None:
                    continue
                result.answered += 1
                result.codes["%d.%02d" % (data[1] >> 5, data[1] & 31)] += 1
                result.latencies.append(time.perf_counter() - sent_at)
        now = time.perf_counter()
        for s in socks:
            stale = [m for m, t in s.outstanding.items() if now - t > timeout]
            for m in stale:
                del s.outstanding[m]
                result.lost += 1
        if progress is not None and now - last_progress > 0.5:
            progress((now - start) / duration)
            last_progress = now
    result.duration = time.perf_counter() - start
    for s in socks:
        selector.unregister(s.sock)
        s.sock.close()
    return result
