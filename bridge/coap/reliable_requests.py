"""Requests and answers on reliable connections, without I/O: frames to and from the
exchange layer, with answers and notifications sized to the peer's Max-Message-Size.

A request frame's options are read by the shared codec (``options.decode_options``) and
the message goes to the ``ExchangeLayer`` every transport shares (refused options,
Block1 reassembly per connection, blocks), which gives back the ``Incoming`` for the
handler or the answer to send at once. An RFC 8323 connection has no message types, so
the exchange layer is made without observation state, and a notification's fate is
``"delivered"`` once it is written (``edge.stream``).

Answers go whole when they fit the peer's Max-Message-Size (and ours: what we take is
what we send at most, which keeps one message within the write buffer) and no block was
asked (TCP needs no 1024-byte cut); otherwise the exchange layer slices them as over UDP,
in blocks no larger than the peer takes. Where both CSMs offer BERT (RFC 8323 §6,
``Connection.bert``), an answer that does not fit, or one asked with a BERT Block2,
goes in BERT blocks: the multiples of 1024 bytes that fit both sizes (``bert_length``);
a Block2 asked with a smaller SZX is answered in blocks of that size, and BERT Block1
uploads are taken (the exchange layer's ``bert`` predicate, given by the edge). There is
no amplification limit: a TCP peer's address is proven by its handshake.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional, Tuple, Union

from ..core import codes
from .exchange import Answer, BertPeer, ExchangeLayer, Incoming
from .message import Message, make_response, set_options
from .options import BERT, BERT_UNIT, BLOCK1, Block, Malformed, decode_options, encode_options
from .framing import Frame, header_size

Out = Tuple[int, bytes, bytes]  # code, token, body: a frame to send
ROOM = 64  # bytes of a message's header and options, beside its payload
BLOCK_SIZE = codes.BLOCK_SIZE  # the largest block we send (SZX 6) without BERT
MAX_TOKEN = 8  # bytes of the longest token (RFC 8323 §3.2: TKL 0-8)


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


def answer_room(size: int) -> int:
    """The most payload one message of at most ``size`` bytes carries, whatever its token:
    what one answer to a request can get (the download budget charges it)."""
    return max(size - ROOM - MAX_TOKEN, 16)


def bert_length(size: int) -> int:
    """The bytes of the BERT blocks we send in messages of at most ``size`` bytes (both
    Max-Message-Sizes over 1152): the multiples of 1024 that fit beside header, token and
    options, at least one."""
    return max(answer_room(size) // BERT_UNIT, 1) * BERT_UNIT


class Requests:
    """The request side shared by every connection of one transport; ``bert``: whether
    BERT is on with a peer (its connection's two CSMs offer it)."""

    def __init__(self, max_body: int, log: Any, bert: Optional[BertPeer] = None):
        self.exchange = ExchangeLayer(max_body, log, bert=bert)

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

    def answer(self, incoming: Incoming, answer: Answer, size: int, bert: int = 0) -> Out:
        """``answer`` to ``incoming`` in messages of at most ``size`` bytes (the smaller
        Max-Message-Size): whole if it fits and no block was asked; else in BERT blocks of
        ``bert`` bytes (0: BERT is off) unless a smaller block was asked; else block by
        block as asked (RFC 7959)."""
        request, message = incoming.message, answer.message
        token = request.token
        asked = request.block2
        if asked is None and answer.large is None and \
                len(message.payload) + ROOM + len(token) <= size:
            block1 = request.option(BLOCK1)
            if block1 is not None and message.option(BLOCK1) is None:
                last = Block.decode(block1)._replace(more=False)
                message = set_options(message, [(BLOCK1, last.encode())])
            return message.code, token, body_of(message)
        if bert and (asked is None or asked.szx == BERT):
            return frame_of(self.exchange.bert_response(incoming, answer, bert))
        room = max(size - ROOM - len(token), 16)
        return frame_of(self.exchange.response(incoming, answer, room))

    def notification(self, token: bytes, code: int, payload: bytes, observe: int,
                     content_format: int, size: int, bert: int = 0) -> Out:
        """An observe notification (RFC 7641, RFC 8323 §7): whole if it fits a message of
        ``size`` bytes, else its first block with an ETag (a BERT block of ``bert`` bytes
        where BERT is on; the device GETs the rest, RFC 7959 §2.6)."""
        if len(payload) + ROOM + len(token) <= size:
            block = max(len(payload), 16)
        else:
            block = bert or largest_block(size, token)
        return frame_of(self.exchange.notification(token, code, payload, observe, block,
                                                   content_format))

    def expire(self, now: float) -> None:
        self.exchange.handle_timer(now)


__all__ = ["Requests", "Malformed", "body_of", "message_of", "largest_block", "answer_room",
           "bert_length"]
