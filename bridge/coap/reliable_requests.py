"""Requests and answers on reliable connections, without I/O: frames <-> the UDP codec's
messages, Block1 reassembly and Block2 slicing sized to the peer's Max-Message-Size.

A request frame's options are read by the same codec and rules as a UDP
datagram's (``codec.decode``, ``codec.rejected_options``): the frame is given
the four-byte RFC 7252 header it lacks (a CON with Message ID 0, so the core
treats the connection's requests as confirmable and waits for each
notification's outcome, which the connection reports as soon as it is
written). Answers and notifications are the codec's messages too; their
options and payload become the frame's body. Block1 uploads are reassembled
per connection and path (``blocks.Uploads``, bounded as over UDP); Block2
answers are sliced as over UDP, in blocks no larger than the peer can take
(no amplification limit: a TCP or TLS peer's address is proven).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from ..core import codes
from . import codec
from .blocks import LargeBody, Uploads, slice_response
from .codec import BLOCK_SIZE_EXP, Malformed, Message
from .framing import Frame, header_size

Answer = Tuple[int, bytes, bytes]  # code, token, body: a frame to send


def body_of(message: Message) -> bytes:
    """A message's options and payload as they go in a frame."""
    body = message.opt.encode()
    payload = message.payload
    if payload:
        body += b"\xff" + (payload if isinstance(payload, bytes) else payload.encode("utf-8"))
    return body


def diagnostic(code: int, token: bytes, text: bytes, **options: Any) -> Answer:
    message = codec.make_response(code, text, codes.TEXT_PLAIN if text else None, **options)
    return code, token, body_of(message)


def largest_block(peer_max: int, token: bytes) -> int:
    """The SZX of the largest block whose message fits ``peer_max`` bytes (with room for
    the options an answer carries), at most ours; 0 if even that does not fit."""
    szx = BLOCK_SIZE_EXP
    while szx > 0 and (1 << (szx + 4)) + 64 + len(token) > peer_max:
        szx -= 1
    return szx


class Requests:
    """The request side shared by every connection of one transport."""

    def __init__(self, max_body: int):
        codec.install()
        self.uploads = Uploads(max_body)

    def decode(self, frame: Frame, peer: Any, now: float) -> Union[Message, Answer]:
        """The request in ``frame`` to hand to the handler (``remote``: ``peer``), or the
        answer to send at once (4.02, 4.08, 4.13, 2.31 Continue). ``Malformed`` when
        its options are (a connection error)."""
        token = frame.token
        data = bytes((0x40 | len(token), frame.code, 0, 0)) + token + frame.body
        message, numbers = codec.decode(data, peer)
        block1, block2 = message.opt.block1, message.opt.block2
        rejected = codec.rejected_options(numbers, block1, block2)
        if rejected is not None:
            return diagnostic(rejected[0], token, rejected[1])
        if block1 is not None:
            collected = self.uploads.collect(message, block1, now)
            if not isinstance(collected, bytes):
                code, text, options = collected
                return diagnostic(code, token, text, **options)
            message.payload = collected
        return message

    def too_large(self, token: bytes, max_size: int) -> Answer:
        """A request over our Max-Message-Size: 4.13 with Size1, the largest body we take
        in one message (RFC 7959 §2.9.3)."""
        room = max_size - header_size(max_size, len(token)) - 16
        return diagnostic(codes.REQUEST_ENTITY_TOO_LARGE, token,
                          b"message over Max-Message-Size %d" % max_size, size1=max(room, 0))

    def answer(self, request: Message, response: Message, peer_max: int,
               large: Optional[LargeBody] = None) -> Answer:
        """``response`` to ``request``, whole if it fits the peer, else block by block as
        asked (RFC 7959)."""
        token = request.token
        response.token = token
        asked = request.opt.block2
        if request.opt.block1 is not None and response.opt.block1 is None:
            block1 = request.opt.block1
            response.opt.block1 = (block1.block_number, False, block1.size_exponent)
        size = large.size if large is not None else len(response.payload)
        if asked is None and large is None and size + 64 + len(token) <= peer_max:
            return response.code, token, body_of(response)
        szx = largest_block(peer_max, token)
        if asked is not None:
            szx = min(szx, asked.size_exponent)
        number = asked.block_number if asked is not None else 0
        sliced = slice_response(response, number, szx, large)
        return sliced.code, token, body_of(sliced)

    def notification(self, token: bytes, code: int, payload: bytes, observe: int,
                     content_format: int, peer_max: int) -> Answer:
        """An observe notification (RFC 7641, RFC 8323 §7): whole if it fits the peer,
        else its first block with an ETag (the device GETs the rest, RFC 7959 §2.6)."""
        message = Message(code=code, payload=payload, token=token)
        message.opt.observe = observe
        if payload:
            message.opt.content_format = content_format
        szx = largest_block(peer_max, token)
        block = 1 << (szx + 4)
        if len(payload) + 64 + len(token) > peer_max and len(payload) > block:
            message.payload = payload[:block]
            codec.mark_block(message, 0, szx, len(payload), codec.etag(payload))
        return code, token, body_of(message)

    def expire(self, now: float) -> None:
        self.uploads.expire(now)


__all__ = ["Requests", "Malformed", "body_of", "diagnostic", "largest_block"]
