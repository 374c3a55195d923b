"""CoAP options (RFC 7252 §3.1, §5.4, §5.10; RFC 7641; RFC 7959): numbers, formats, the
option list's wire form, and the options a server must refuse.

Shared by every transport: the datagram codec (``message.py``) calls ``decode_options``
and ``encode_options`` after its 4-byte header and token, and the RFC 8323 framing does
the same after its length-prefixed header; a message's options are a tuple of
``(number, value)`` pairs in wire order (ascending numbers, repeats in the order sent).

Why our own (defect numbers refer to ../shared/spec/txthings-notes.md): txThings 0.3.0
decodes options into objects with ``six`` per option and mis-parses or crashes on
malformed ones (W2), has no notion of refusing unknown critical options (W3), and encodes
a Block option of value 0 wrongly (W11). Here a malformed list raises ``Malformed``
(never another exception), ``refusal`` says what to answer (4.02, 5.05), and a Block of
value 0 is the empty uint RFC 7252 §3.2 asks for.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from ..core import codes

IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT = 1, 3, 4, 5, 6, 7
LOCATION_PATH, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 8, 11, 12, 14, 15, 17
LOCATION_QUERY, BLOCK2, BLOCK1, SIZE2, PROXY_URI, PROXY_SCHEME, SIZE1 = 20, 23, 27, 28, 35, 39, 60

Options = Tuple[Tuple[int, bytes], ...]

# The critical options this server understands (RFC 7252 §5.4.1: odd numbers are
# critical) and the lengths their values may have (§5.10, RFC 7959 §2.1); any other
# critical option, or one of these with a length out of range (§5.4.3), gets 4.02.
CRITICAL_LENGTHS = {URI_HOST: (1, 255), URI_PORT: (0, 2), URI_PATH: (0, 255),
                    URI_QUERY: (0, 255), ACCEPT: (0, 2), BLOCK2: (0, 3), BLOCK1: (0, 3)}
PROXY_OPTIONS = frozenset({PROXY_URI, PROXY_SCHEME})


BERT = 7  # the block size exponent of BERT blocks (RFC 8323 §6): multiples of 1024 bytes
BERT_UNIT = 1024  # a BERT block's number counts 1024-byte blocks (as SZX 6)
# what ``refusal`` answers a Block option with SZX 7 (the same object each time: a reliable
# transport where both ends offer BERT tells it apart and looks at the other options)
BERT_REFUSED = (codes.BAD_OPTION, b"block size exponent 7 is reserved")


class Malformed(Exception):
    """Bytes that break the message format (RFC 7252 §3): a format error."""


class NotCoap(Malformed):
    """Shorter than a CoAP header, or of another version: not worth an RST."""


def decode_uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def encode_uint(number: int) -> bytes:
    """The shortest form of ``number`` (0 is the empty string, RFC 7252 §3.2)."""
    return number.to_bytes((number.bit_length() + 7) >> 3, "big")


class Block(NamedTuple):
    """A Block1 or Block2 option (RFC 7959 §2.2): block ``number``, ``more`` to follow,
    size exponent ``szx`` (blocks of 2 ** (szx + 4) bytes; SZX 7, BERT, counts blocks of
    1024 bytes and carries any multiple of them, RFC 8323 §6)."""

    number: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        """The block size, 1024 for a BERT block (its unit: the block number counts those)."""
        szx = self.szx
        return 1 << (szx + 4) if szx < BERT else BERT_UNIT

    @classmethod
    def decode(cls, value: bytes) -> "Block":
        raw = int.from_bytes(value, "big")
        return cls(raw >> 4, bool(raw & 0x08), raw & 0x07)

    def encode(self) -> bytes:
        return encode_uint((self.number << 4) | (self.more << 3) | self.szx)


def _extended(nibble: int, data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """The value of an option delta or length nibble of 13 or 14, and the position after
    its extension bytes."""
    if nibble == 13:
        if pos >= end:
            raise Malformed("option extension truncated")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > end:
            raise Malformed("option extension truncated")
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    raise Malformed("reserved option nibble 15")


def decode_options(data: bytes, pos: int, end: int) -> Tuple[Options, bytes]:
    """The options in ``data[pos:end]`` and the payload after them; ``Malformed`` for a
    truncated option, a reserved nibble or a payload marker without payload."""
    options = []
    append = options.append
    number = 0
    while pos < end:
        byte = data[pos]
        if byte < 0xD0 and byte & 0x0F < 13:  # the common option: no extension bytes
            number += byte >> 4
            pos += 1
            stop = pos + (byte & 0x0F)
        elif byte == 0xFF:
            if pos + 1 == end:
                raise Malformed("payload marker without payload")
            return tuple(options), data[pos + 1:end]
        else:
            delta, length, pos = byte >> 4, byte & 0x0F, pos + 1
            if delta > 12:
                delta, pos = _extended(delta, data, pos, end)
            if length > 12:
                length, pos = _extended(length, data, pos, end)
            number += delta
            stop = pos + length
        if stop > end:
            raise Malformed("option %d value truncated" % number)
        append((number, data[pos:stop]))
        pos = stop
    return tuple(options), b""


def _nibble(value: int) -> Tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode_options(options: Options) -> bytes:
    """``options`` (in ascending order of number) in their wire form."""
    out = bytearray()
    previous = 0
    for number, value in options:
        delta = number - previous
        length = len(value)
        if delta < 13 and length < 13:
            out.append((delta << 4) | length)
        else:
            delta, delta_extension = _nibble(delta)
            length, length_extension = _nibble(length)
            out.append((delta << 4) | length)
            out += delta_extension
            out += length_extension
        out += value
        previous = number
    return bytes(out)


def refusal(options: Options) -> Optional[Tuple[int, bytes]]:
    """W3: the code and diagnostic for options this server must refuse (RFC 7252 §5.4.1,
    §5.7.2, §5.10; RFC 7959 §2.2), or None."""
    lengths = CRITICAL_LENGTHS
    for number, value in options:
        if number & 1 and (number != URI_PATH or len(value) > 255):  # a path: the common one
            bounds = lengths.get(number)
            if bounds is None:
                if number in PROXY_OPTIONS:
                    return codes.PROXYING_NOT_SUPPORTED, b"proxying is not supported"
                return codes.BAD_OPTION, b"unrecognized critical option %d" % number
            if not bounds[0] <= len(value) <= bounds[1]:
                return codes.BAD_OPTION, b"option %d has a length out of range" % number
            if (number == BLOCK2 or number == BLOCK1) and value and value[-1] & 0x07 == 7:
                return BERT_REFUSED
    return None


def is_bert(option: Tuple[int, bytes]) -> bool:
    """A Block1 or Block2 option with SZX 7 (a BERT block, RFC 8323 §6) of a valid length."""
    number, value = option
    return (number == BLOCK2 or number == BLOCK1) and 0 < len(value) <= 3 \
        and value[-1] & 0x07 == BERT


def bert_refusal(options: Options) -> Optional[Tuple[int, bytes]]:
    """``refusal`` where both ends of a connection offer BERT: a Block option with SZX 7 is
    taken, every other option is looked at as ``refusal`` does."""
    return refusal(tuple([option for option in options if not is_bert(option)]))
