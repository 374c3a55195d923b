"""CoAP messages as immutable values, and their datagram form (RFC 7252 §3).

``Message`` is what every layer hands on: code, token, options (``options.py``) and
payload, plus the type and Message ID a datagram carried (None for a message of a
reliable transport, RFC 8323, which has neither). Nothing changes a message once it
is made; ``make_response`` builds an answer with its options in order, and a layer that must
add something (the token, a Block option) makes a new one.

``decode``/``encode`` are the datagram form (UDP, and DTLS's plaintext). ``decode``
checks the whole format before anything reads the message: TKL 9-15, reserved code
classes 1, 6 and 7, truncated tokens and options, reserved option nibbles, a payload
marker without payload and "empty" messages that are not (W2 in
../shared/spec/txthings-notes.md) raise ``Malformed``; a short datagram or another
version ``NotCoap``. Nothing else escapes it.

Why our own codec: txThings 0.3.0 (the design card's engine) imports Twisted's global
reactor at its top, so a sans-IO layer built on it is not sans-IO at import time; its
``Message`` is mutable and changed in place by its users; it decodes each option into
an object through ``six``; and its defects needed monkeypatching its module globals
(W1 logging, W11 Block option). txThings provides nothing here any more: the bridge no
longer depends on it (tests/coap/test_codec.py checks this codec against the test
suite's own independent encoder and decoder instead).
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Tuple

from .options import (BLOCK1, BLOCK2, CONTENT_FORMAT, ETAG, MAX_AGE, OBSERVE, SIZE1, URI_PATH,
                      URI_QUERY, Block, Malformed, NotCoap, Options, decode_options,
                      encode_options, encode_uint)

CON, NON, ACK, RST = 0, 1, 2, 3
TYPES = ("CON", "NON", "ACK", "RST")
EMPTY = 0
GET, POST, PUT, DELETE, FETCH = 1, 2, 3, 4, 5

_HEADER = struct.Struct("!BBH")
_new = tuple.__new__  # a NamedTuple from its fields without its __new__'s keyword handling


class Message(NamedTuple):
    """One CoAP message (see the module docstring)."""

    code: int
    token: bytes = b""
    options: Options = ()
    payload: bytes = b""
    mtype: Optional[int] = None  # CON, NON, ACK or RST from a datagram; None otherwise
    mid: Optional[int] = None

    def option(self, number: int) -> Optional[bytes]:
        """The value of the first option ``number``, or None."""
        options = self.options
        if not options or options[-1][0] < number:  # in ascending order: none can follow
            return None
        for found, value in options:
            if found == number:
                return value
        return None

    def values(self, number: int) -> Tuple[bytes, ...]:
        """The values of every option ``number``, in order (Uri-Path segments)."""
        return tuple([value for found, value in self.options if found == number])

    def uint(self, number: int) -> Optional[int]:
        value = self.option(number)
        return None if value is None else int.from_bytes(value, "big")

    @property
    def uri_path(self) -> Tuple[bytes, ...]:
        return tuple([value for found, value in self.options if found == URI_PATH])

    @property
    def uri_query(self) -> Tuple[bytes, ...]:
        return tuple([value for found, value in self.options if found == URI_QUERY])

    @property
    def observe(self) -> Optional[int]:
        return self.uint(OBSERVE)

    @property
    def content_format(self) -> Optional[int]:
        return self.uint(CONTENT_FORMAT)

    @property
    def block1(self) -> Optional[Block]:
        value = self.option(BLOCK1)
        return None if value is None else Block.decode(value)

    @property
    def block2(self) -> Optional[Block]:
        value = self.option(BLOCK2)
        return None if value is None else Block.decode(value)

    @property
    def is_request(self) -> bool:
        return 1 <= self.code < 32


def decode(data: bytes) -> Message:
    """The message in a datagram; ``Malformed`` (or ``NotCoap``) when it is not one."""
    end = len(data)
    if end < 4 or data[0] >> 6 != 1:
        raise NotCoap("short datagram or wrong version")
    first = data[0]
    tkl = first & 0x0F
    if tkl > 8:
        raise Malformed("token length %d" % tkl)
    code = data[1]
    if code >> 5 in (1, 6, 7):
        raise Malformed("reserved code class %d" % (code >> 5))
    pos = 4 + tkl
    if pos > end:
        raise Malformed("token truncated")
    mtype = (first >> 4) & 0x03
    mid = (data[2] << 8) | data[3]
    if code == EMPTY:
        if end != 4 or tkl:
            raise Malformed("empty message with token or options")
        return _new(Message, (EMPTY, b"", (), b"", mtype, mid))
    if pos == end:
        return _new(Message, (code, data[4:pos], (), b"", mtype, mid))
    options, payload = decode_options(data, pos, end)
    return _new(Message, (code, data[4:pos], options, payload, mtype, mid))


def encode(mtype: int, mid: int, message: Message) -> bytes:
    """``message`` as a datagram of type ``mtype`` with Message ID ``mid`` (the message's
    own ``mtype``/``mid``, if any, are not used)."""
    token = message.token
    data = _HEADER.pack(0x40 | (mtype << 4) | len(token), message.code, mid) + token
    if message.options:
        data += encode_options(message.options)
    if message.payload:
        data += b"\xff" + message.payload
    return data


def empty(mtype: int, mid: int) -> bytes:
    """An empty ACK or RST (RFC 7252 §4.2, §4.3)."""
    return _HEADER.pack(0x40 | (mtype << 4), EMPTY, mid)


def make_response(code: int, payload: bytes = b"", content_format: Optional[int] = None,
             max_age: Optional[int] = None, size1: Optional[int] = None,
             observe: Optional[int] = None, block1: Optional[Block] = None,
             etag: Optional[bytes] = None) -> Message:
    """An answer with these options (in ascending order, as the wire needs them)."""
    if content_format is None and max_age is None and size1 is None and observe is None \
            and block1 is None and etag is None:
        return Message(code, b"", (), payload)
    options = []
    if etag is not None:
        options.append((ETAG, etag))
    if observe is not None:
        options.append((OBSERVE, encode_uint(observe)))
    if content_format is not None:
        options.append((CONTENT_FORMAT, encode_uint(content_format)))
    if max_age is not None:
        options.append((MAX_AGE, encode_uint(max_age)))
    if block1 is not None:
        options.append((BLOCK1, block1.encode()))
    if size1 is not None:
        options.append((SIZE1, encode_uint(size1)))
    return Message(code, b"", tuple(options), payload)


def set_options(message: Message, added: List[Tuple[int, bytes]]) -> Message:
    """``message`` with the options ``added`` in place of any of the same numbers (a new
    message; every option in order, repeated ones in the order they had)."""
    numbers = {number for number, _ in added}
    kept = [option for option in message.options if option[0] not in numbers]
    options = sorted(kept + added, key=_number)
    return Message(message.code, message.token, tuple(options), message.payload,
                   message.mtype, message.mid)


def _number(option: Tuple[int, bytes]) -> int:
    return option[0]
