"""Requests and answers on reliable connections, without I/O: frames to and from the
exchange layer, with answers and notifications sized to the peer's Max-Message-Size.

A request frame's options are read by the shared codec (``options.decode_options``) and
the message goes to the ``ExchangeLayer`` every transport shares (refused options,
Block1 reassembly per connection, blocks), which gives back the ``Incoming`` for the
handler or the answer to send at once. An RFC 8323 connection has no message types, so
the exchange layer is made without observation state, and a notification's fate is
``"delivered"`` once it is written (``edge.stream``).

Answers go whole when they fit the peer's Max-Message-Size and no block was asked (TCP
needs no 1024-byte cut); otherwise the exchange layer slices them as over UDP, in blocks
no larger than the peer takes. There is no amplification limit: a TCP peer's address is
proven by its handshake.
"""

from __future__ import annotations

from typing import Any, Hashable, Tuple, Union

from ..core import codes
from .exchange import Answer, ExchangeLayer, Incoming
from .message import Message, make_response, set_options
from .options import BLOCK1, Block, Malformed, decode_options, encode_options
from .framing import Frame, header_size

Out = Tuple[int, bytes, bytes]  # code, token, body: a frame to send
ROOM = 64  # bytes of a message's header and options, beside its payload
BLOCK_SIZE = codes.BLOCK_SIZE  # the largest block we send (SZX 6)


def body_of(message: Message) -> bytes:
    """A message's options and payload as they go in a frame."""
    body = encode_options(message.options) if message.options else b""
    return body + b"\xff" + message.payload if message.payload else body


def frame_of(message: Message) -> Out:
    return message.code, message.token, body_of(message)


def message_of(frame: Frame) -> Message:
    """The message in a frame (``Malformed`` when its options are: a connection error)."""
    options, payload = decode_options(frame.body, 0, len(frame.body)) if frame.body \
        else ((), b"")
    return Message(frame.code, frame.token, options, payload)


def largest_block(peer_max: int, token: bytes) -> int:
    """The largest block (bytes, a power of two, at most ours) whose message fits
    ``peer_max`` bytes; 16 if even that does not."""
    size = BLOCK_SIZE
    while size > 16 and size + ROOM + len(token) > peer_max:
        size //= 2
    return size


class Requests:
    """The request side shared by every connection of one transport."""

    def __init__(self, max_body: int, log: Any):
        self.exchange = ExchangeLayer(max_body, log)

    def decode(self, frame: Frame, peer: Hashable, now: float) -> Union[Incoming, Out]:
        """The request in ``frame`` for the handler, or the answer to send at once (4.02,
        4.08, 4.13, 2.31 Continue). ``Malformed`` when its options are."""
        got = self.exchange.receive(peer, message_of(frame), now)
        return got if isinstance(got, Incoming) else frame_of(got)

    def too_large(self, token: bytes, max_size: int) -> Out:
        """A request over our Max-Message-Size: 4.13 with Size1, the largest body we take
        in one message (RFC 7959 §2.9.3)."""
        room = max(max_size - header_size(max_size, len(token)) - 16, 0)
        answer = make_response(codes.REQUEST_ENTITY_TOO_LARGE,
                               b"message over Max-Message-Size %d" % max_size,
                               codes.TEXT_PLAIN, size1=room)
        return answer.code, token, body_of(answer)

    def answer(self, incoming: Incoming, answer: Answer, peer_max: int) -> Out:
        """``answer`` to ``incoming``: whole if it fits the peer and no block was asked,
        else block by block as asked (RFC 7959)."""
        request, message = incoming.message, answer.message
        token = request.token
        if request.block2 is None and answer.large is None and \
                len(message.payload) + ROOM + len(token) <= peer_max:
            block1 = request.option(BLOCK1)
            if block1 is not None and message.option(BLOCK1) is None:
                last = Block.decode(block1)._replace(more=False)
                message = set_options(message, [(BLOCK1, last.encode())])
            return message.code, token, body_of(message)
        room = max(peer_max - ROOM - len(token), 16)
        return frame_of(self.exchange.response(incoming, answer, room))

    def notification(self, token: bytes, code: int, payload: bytes, observe: int,
                     content_format: int, peer_max: int) -> Out:
        """An observe notification (RFC 7641, RFC 8323 §7): whole if it fits the peer,
        else its first block with an ETag (the device GETs the rest, RFC 7959 §2.6)."""
        fits = len(payload) + ROOM + len(token) <= peer_max
        block = max(len(payload), 16) if fits else largest_block(peer_max, token)
        return frame_of(self.exchange.notification(token, code, payload, observe, block,
                                                   content_format))

    def expire(self, now: float) -> None:
        self.exchange.handle_timer(now)


__all__ = ["Requests", "Malformed", "body_of", "message_of", "largest_block"]
