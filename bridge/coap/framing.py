"""CoAP message framing on reliable transports, without I/O (RFC 8323 §3.2 and §4).

Over TCP and TLS a message is length-prefixed: a first byte of Len (4 bits) and
TKL (4 bits), 0, 1, 2 or 4 bytes of extended length (Len 13, 14, 15: the length
minus 13, 269 or 65805), the code, the token, then the options and payload
exactly as over UDP. Len counts the options, the payload marker and the payload.
Over WebSockets (§4) a message is one binary WebSocket message with Len 0 and
no extended length: the WebSocket frame carries the length. Neither has a
version, a type or a Message ID.

This module only cuts the byte stream into ``Frame`` values (code, token, and
the options and payload as one ``body``) and writes them; the options inside a
body are read by the shared codec (``options``), through ``reliable_requests``
for requests and ``signalling`` for signalling messages. Our own code because the
framing is a few dozen lines and no library we use has it.

``StreamDecoder`` keeps at most one partial message (bounded by the
Max-Message-Size we advertise); a message announced larger is not buffered: its
header is reported as ``Oversized`` and its bytes are skipped as they arrive.
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Union

# Len nibble -> (bytes of extended length, offset added to them)
_EXTENDED = {13: (1, 13), 14: (2, 269), 15: (4, 65805)}
MAX_TOKEN = 8  # TKL 9-15 are reserved (RFC 8323 §3.2, as RFC 7252 §3)


class FramingError(Exception):
    """The byte stream or WebSocket message is not a CoAP message: a connection error
    (the connection is aborted, RFC 8323 §5.6)."""


class Frame(NamedTuple):
    """One CoAP message on a reliable transport: ``body`` is its options and payload as
    they are on the wire (with the payload marker)."""

    code: int
    token: bytes
    body: bytes


class Oversized(NamedTuple):
    """A message longer than we accept: its code, token and announced ``size`` (header
    included); its bytes are skipped, never buffered."""

    code: int
    token: bytes
    size: int


def _length_field(length: int) -> bytes:
    """The Len nibble (shifted into place) and the extended length bytes of ``length``."""
    if length < 13:
        return bytes((length << 4,))
    if length < 269:
        return bytes((13 << 4, length - 13))
    if length < 65805:
        return struct.pack("!BH", 14 << 4, length - 269)
    return struct.pack("!BI", 15 << 4, length - 65805)


def encode(code: int, token: bytes, body: bytes) -> bytes:
    """A message for a TCP or TLS connection (RFC 8323 §3.2)."""
    head = bytearray(_length_field(len(body)))
    head[0] |= len(token)
    head.append(code)
    return bytes(head) + token + body


def encode_ws(code: int, token: bytes, body: bytes) -> bytes:
    """A message for one WebSocket binary message (RFC 8323 §4.2: Len 0)."""
    return bytes((len(token), code)) + token + body


def decode_ws(data: bytes) -> Frame:
    """The message in one WebSocket binary message (``FramingError`` if it is none)."""
    if len(data) < 2:
        raise FramingError("message of %d bytes, shorter than a CoAP header" % len(data))
    first = data[0]
    if first >> 4:
        raise FramingError("Len %d in a WebSocket message (must be 0)" % (first >> 4))
    tkl = first & 0x0F
    if tkl > MAX_TOKEN:
        raise FramingError("token length %d" % tkl)
    if len(data) < 2 + tkl:
        raise FramingError("token truncated")
    return Frame(data[1], bytes(data[2:2 + tkl]), bytes(data[2 + tkl:]))


def header_size(size: int, tkl: int) -> int:
    """Bytes of a TCP message's header (length, code, token) for a body of ``size``."""
    return len(_length_field(size)) + 1 + tkl


class StreamDecoder:
    """Cuts a TCP byte stream into frames (see the module docstring).

    ``feed`` returns the frames completed by ``data``, in order, and raises
    ``FramingError`` at the first malformed header (nothing after it is read).
    """

    __slots__ = ("max_size", "_buffer", "_skip")

    def __init__(self, max_size: int):
        self.max_size = max_size  # a whole message, header included
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized message still to drop

    @property
    def buffered(self) -> int:
        """Bytes held of a message not yet complete."""
        return len(self._buffer)

    def _past_skip(self, data: bytes) -> bytes:
        """``data`` less what is left of an oversized message being dropped."""
        if len(data) <= self._skip:
            self._skip -= len(data)
            return b""
        data = data[self._skip:]
        self._skip = 0
        return data

    def feed(self, data: bytes) -> List[Union[Frame, Oversized]]:
        if self._skip:
            data = self._past_skip(data)
            if not data:
                return []
        buffer = self._buffer
        if buffer:
            buffer += data
            view: Union[bytes, bytearray] = buffer
        else:
            view = data  # the common case: whole messages in one read, no copy
        out: List[Union[Frame, Oversized]] = []
        pos = 0
        end = len(view)
        while pos < end:
            first = view[pos]
            nibble, tkl = first >> 4, first & 0x0F
            if tkl > MAX_TOKEN:
                raise FramingError("token length %d" % tkl)
            if nibble < 13:
                length, start = nibble, pos + 1
            else:
                width, offset = _EXTENDED[nibble]
                start = pos + 1 + width
                if start > end:
                    break
                length = int.from_bytes(view[pos + 1:start], "big") + offset
            body = start + 1 + tkl  # past the code and the token
            total = body - pos + length
            if total > self.max_size:
                if body > end:
                    break  # the code and token first, to answer it
                out.append(Oversized(view[start], bytes(view[start + 1:body]), total))
                left = end - body
                if left < length:
                    self._skip = length - left
                    pos = end
                    break
                pos = body + length
                continue
            stop = body + length
            if stop > end:
                break
            out.append(Frame(view[start], bytes(view[start + 1:body]), bytes(view[body:stop])))
            pos = stop
        if view is buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]
        return out
