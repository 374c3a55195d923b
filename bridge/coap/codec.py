"""The CoAP message format over txThings' codec: the checks it lacks and our option helpers.

txThings 0.3.0 (pinned, the design card's engine) encodes and decodes
messages and options; it mis-parses or crashes on malformed datagrams and
encodes a Block option of value 0 wrongly. Defect numbers refer to
../shared/spec/txthings-notes.md:

* W2  ``inspect`` checks the message format before txThings decodes it
  (TKL 9-15, reserved nibbles, truncated options, payload marker without
  payload, reserved classes, non-empty "empty" messages).
* W3  ``rejected_options``: unknown critical options get 4.02,
  Proxy-Uri/Proxy-Scheme 5.05, out-of-range lengths 4.02.
* W7  1024-byte blocks (``BLOCK_SIZE_EXP``) instead of 64.
* W11 ``FixedBlockOption``: Block options of value 0 are encoded correctly.

Nothing here does I/O; txThings' module imports Twisted's reactor by itself,
which is its defect, not a use of it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, List, Optional, Tuple

import txthings.coap as txcoap

from ..core import codes

# Options this server understands (RFC 7252 §5.4.1: odd numbers are critical).
UNDERSTOOD_CRITICAL = frozenset({3, 7, 11, 15, 17, 23, 27})
PROXY_OPTIONS = frozenset({35, 39})
# Allowed value lengths of the critical options we understand (RFC 7252 §5.10, RFC 7959).
OPTION_LENGTHS = {3: (1, 255), 7: (0, 2), 11: (0, 255), 15: (0, 255), 17: (0, 2), 23: (0, 3),
                  27: (0, 3)}
BLOCK_SIZE_EXP = codes.BLOCK_SIZE.bit_length() - 5  # W7: 1024-byte blocks (SZX 6)
CONTINUE = 95  # 2.31
REQUEST_ENTITY_INCOMPLETE = 136  # 4.08

CON, NON, ACK, RST = txcoap.CON, txcoap.NON, txcoap.ACK, txcoap.RST
Message = txcoap.Message


class Malformed(Exception):
    """A datagram that violates RFC 7252 §3 message format."""


class NotCoap(Malformed):
    """Shorter than a CoAP header, or of another version: not worth an RST."""


def inspect(data: bytes) -> List[int]:
    """Check the message format and return the option numbers in order.

    Raises ``Malformed`` for format errors that txThings would mis-parse or
    crash on. The header (4 bytes, version 1) is checked by the caller. An
    option whose length is out of its range is listed as its negative number
    (treated as unrecognized, RFC 7252 §5.4.3).
    """
    tkl = data[0] & 0x0F
    if tkl > 8:
        raise Malformed("token length %d" % tkl)
    code = data[1]
    if code >> 5 in (1, 6, 7):
        raise Malformed("reserved code class %d" % (code >> 5))
    pos = 4 + tkl
    end = len(data)
    if pos > end:
        raise Malformed("token truncated")
    if code == 0:
        if end != 4 or tkl:
            raise Malformed("empty message with token or options")
        return []
    return _option_numbers(data, pos, end)


def _option_numbers(data: bytes, pos: int, end: int) -> List[int]:
    """The option numbers of the options from ``pos`` up to the payload marker or ``end``."""
    numbers: List[int] = []
    number = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == end:
                raise Malformed("payload marker without payload")
            break
        delta, length = byte >> 4, byte & 0x0F
        values = []
        for nibble in (delta, length):
            if nibble == 13:
                if pos + 1 > end:
                    raise Malformed("option extension truncated")
                values.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                if pos + 2 > end:
                    raise Malformed("option extension truncated")
                values.append(((data[pos] << 8) | data[pos + 1]) + 269)
                pos += 2
            elif nibble == 15:
                raise Malformed("reserved option nibble 15")
            else:
                values.append(nibble)
        number += values[0]
        pos += values[1]
        if pos > end:
            raise Malformed("option %d value truncated" % number)
        numbers.append(number)
        low, high = OPTION_LENGTHS.get(number, (0, 65535))
        if not low <= values[1] <= high:
            numbers.append(-number)
    return numbers


def decode(data: bytes, peer: Any) -> Tuple[Message, List[int]]:
    """The message in ``data`` and its option numbers; ``Malformed`` when it is not one."""
    if len(data) < 4 or data[0] >> 6 != 1:
        raise NotCoap("short datagram or wrong version")
    numbers = inspect(data)
    try:
        message = Message.decode(data, peer, None)
        message.opt.block1, message.opt.block2  # noqa: B018 (decoded lazily: fail here)
    except (ValueError, struct.error, IndexError) as exc:
        raise Malformed(str(exc)) from None
    if not isinstance(message.payload, bytes):
        message.payload = bytes(message.payload, "latin-1") if message.payload else b""
    return message, numbers


def rejected_options(numbers: List[int], block1: Any, block2: Any) -> Optional[Tuple[int, bytes]]:
    """W3: the code and diagnostic for options this server must refuse, or None."""
    for number in numbers:
        if number < 0:
            return codes.BAD_OPTION, b"option %d has a length out of range" % -number
        if number in PROXY_OPTIONS:
            return codes.PROXYING_NOT_SUPPORTED, b"proxying is not supported"
        if number & 1 and number not in UNDERSTOOD_CRITICAL:
            return codes.BAD_OPTION, b"unrecognized critical option %d" % number
    for block in (block1, block2):
        if block is not None and block.size_exponent == 7:
            return codes.BAD_OPTION, b"block size exponent 7 is reserved"
    return None


class FixedBlockOption(txcoap.BlockOption):
    """W11: txThings computes the length of a Block option as a float; value 0 came out corrupt."""

    @property
    def length(self) -> int:  # type: ignore[override]
        return len(self.encode())


_installed = False


def install() -> None:
    """W11: make txThings encode and decode Block options with ``FixedBlockOption``. Idempotent."""
    global _installed
    if _installed:
        return
    txcoap.BlockOption = FixedBlockOption
    txcoap.option_formats[txcoap.BLOCK1] = FixedBlockOption
    txcoap.option_formats[txcoap.BLOCK2] = FixedBlockOption
    _installed = True


def make_response(code: int, payload: bytes = b"", content_format: Optional[int] = None,
                  max_age: Optional[int] = None, size1: Optional[int] = None,
                  observe: Optional[int] = None, block1: Optional[Tuple[int, bool, int]] = None
                  ) -> Message:
    install()
    message = Message(code=code, payload=payload)
    if observe is not None:
        message.opt.observe = observe
    if content_format is not None:
        message.opt.content_format = content_format
    if max_age is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.MAX_AGE, max_age))
    if size1 is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.SIZE1, size1))
    if block1 is not None:
        message.opt.block1 = block1
    return message


def mark_block(message: Message, number: int, szx: int, size: int,
               tag: Optional[bytes] = None) -> None:
    """The options of block ``number`` (of 2**(szx+4) bytes) of a body of ``size`` bytes:
    Block2, Size2 with the first block, and ETag ``tag`` (RFC 7959 §2.2, §2.4)."""
    message.opt.block2 = (number, (number + 1) << (szx + 4) < size, szx)
    if tag is not None:
        message.opt.etag = tag
    if number == 0:
        message.opt.addOption(txcoap.UintOption(txcoap.SIZE2, size))


def etag(body: bytes) -> bytes:
    """An entity tag of ``body``: blocks of one representation carry the same one."""
    return struct.pack("!I", zlib.crc32(body))


def uint_option(message: Message, number: int) -> Optional[int]:
    options = message.opt.getOption(number)
    return options[0].value if options else None


def describe(peer: Any) -> str:
    """A peer for logs: ``host:port``, ``[v6]:port``, or what a non-address peer says it is."""
    if type(peer) is not tuple:
        return str(peer)
    address, port = peer[0], peer[1]
    return "[%s]:%d" % (address, port) if ":" in str(address) else "%s:%d" % (address, port)
