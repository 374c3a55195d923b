"""A minimal CoAP codec for tests (independent of txThings), and a blocking UDP client."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, BLOCK2, SIZE1 = 11, 12, 14, 15, 23, 60


def code(cls: int, detail: int) -> int:
    return (cls << 5) | detail


def dotted(value: int) -> str:
    return "%d.%02d" % (value >> 5, value & 0x1F)


@dataclass
class Msg:
    mtype: int
    code: int
    mid: int
    token: bytes = b""
    options: List[Tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    def option(self, number: int) -> Optional[bytes]:
        for num, value in self.options:
            if num == number:
                return value
        return None

    def uint(self, number: int) -> Optional[int]:
        value = self.option(number)
        return None if value is None else int.from_bytes(value, "big")

    @property
    def code_str(self) -> str:
        return dotted(self.code)


def _ext(value: int) -> Tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, struct.pack("!H", value - 269)


def encode(msg: Msg) -> bytes:
    out = bytearray([0x40 | (msg.mtype << 4) | len(msg.token), msg.code])
    out += struct.pack("!H", msg.mid) + msg.token
    last = 0
    for number, value in sorted(msg.options, key=lambda o: o[0]):
        d, dext = _ext(number - last)
        l, lext = _ext(len(value))
        out.append((d << 4) | l)
        out += dext + lext + value
        last = number
    if msg.payload:
        out += b"\xff" + msg.payload
    return bytes(out)


def decode(data: bytes) -> Msg:
    tkl = data[0] & 0x0F
    msg = Msg((data[0] >> 4) & 3, data[1], struct.unpack("!H", data[2:4])[0], data[4:4 + tkl])
    pos, number = 4 + tkl, 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            msg.payload = data[pos:]
            break
        vals = []
        for nib in (byte >> 4, byte & 0x0F):
            if nib == 13:
                vals.append(data[pos] + 13)
                pos += 1
            elif nib == 14:
                vals.append(struct.unpack("!H", data[pos:pos + 2])[0] + 269)
                pos += 2
            else:
                vals.append(nib)
        number += vals[0]
        msg.options.append((number, data[pos:pos + vals[1]]))
        pos += vals[1]
    return msg


def path_options(path: str) -> List[Tuple[int, bytes]]:
    return [(URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]


def request(method: int, path: str, payload: bytes = b"", mtype: int = CON, mid: int = 0x1234,
            token: bytes = b"\x01\x02", extra: Optional[List[Tuple[int, bytes]]] = None) -> Msg:
    return Msg(mtype, method, mid, token, path_options(path) + list(extra or []), payload)


class Client:
    """A blocking UDP socket talking raw CoAP to (host, port)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.addr = (host, port)

    def send(self, msg: Msg) -> None:
        self.sock.sendto(encode(msg), self.addr)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def recv(self, timeout: Optional[float] = None) -> Optional[Msg]:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(70000)
        except socket.timeout:
            return None
        return decode(data)

    def exchange(self, msg: Msg, timeout: float = 5.0) -> Msg:
        """Send ``msg`` and return the response (following an empty ACK, ACKing a CON answer)."""
        self.send(msg)
        while True:
            reply = self.recv(timeout)
            if reply is None:
                raise TimeoutError("no response to mid %d" % msg.mid)
            if reply.code == 0 and reply.mtype == ACK:
                continue  # empty ACK; the answer follows separately
            if reply.mtype == CON:
                self.send(Msg(ACK, 0, reply.mid))
            return reply

    def close(self) -> None:
        self.sock.close()
