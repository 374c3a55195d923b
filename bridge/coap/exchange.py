"""The CoAP exchange layer, shared by every transport: requests, tokens, blocks, observe.

It knows nothing of message types, Message IDs, ACKs or retransmission (the datagram
message layer, ``datagram.py``, owns those for UDP and DTLS; an RFC 8323 connection has
none): it takes a whole request message from its transport and gives back values.

* ``receive(peer, message, now, context)``: refuses options a server must refuse (W3:
  4.02, 5.05, see ``options.refusal``), reassembles Block1 uploads (2.31 per block, 4.08
  out of order, 4.13 past ``max_body``, ``blocks.Uploads``), and returns either the
  ``Incoming`` request for the application or the answer ``Message`` to send at once.
  A GET or FETCH with Observe: 0 (a registration, RFC 7641 §3.1) gets the transport's
  ``observation`` state for it (the ``observation`` factory given at construction,
  None on a transport without notification types), which the application keeps with
  its relation and hands back with each notification.
* ``response(incoming, answer, room)``: the answer as it goes, token set: the Block2
  block the request asked for (random access, Size2, ETag, ``blocks.slice_response``),
  cut smaller while it exceeds ``room`` bytes (the transport's amplification limit, None
  for none), Block1 echoed for the last block of an upload.
* ``bert_response(incoming, answer, length)``: the same on a connection where both ends
  offer BERT (RFC 8323 §6): BERT blocks of ``length`` bytes (a multiple of 1024).
* ``refusal(incoming, code, diagnostic)``: a code with a diagnostic text at once.
* ``notification(token, ...)``: a notification, as its first block when it is longer
  than its relation's block size (RFC 7959 §2.6: the device GETs the rest); a block
  size over 1024 makes that a BERT block.
* ``observation_ended(token, code, ...)``: the notification that ends a relation the
  server cannot go on with: an error code and no Observe option (RFC 7641 §3.2, §4.2),
  after which a client registers again if it still wants notifications.

A Block option with SZX 7 (BERT) is refused (4.02) unless the layer was made with a
``bert`` predicate that says yes for the peer (a reliable connection whose two CSMs offer
Block-Wise-Transfer with a Max-Message-Size over 1152); the datagram transports give
none, and pay nothing for the check (it runs only on a refused option).

The events every transport hands its driver are defined here, so that the driver
(``bridge/edge``) treats all transports alike: ``Incoming`` (a request), ``Transmit``
(bytes for a peer: a datagram, or framed bytes on a connection) and ``Notified`` (the
fate of notification ``ref``). A notification has exactly one fate, after which the
application may send the relation's next one (one in flight per relation, in order):

* ``"ack"``: a CON notification was acknowledged;
* ``"delivered"``: a NON notification was sent (datagram transports), or the
  notification was written to its connection (reliable transports, RFC 8323: no ACK
  exists there, and a closed connection ends its relations as a gone peer does);
* ``"reset"``: the peer answered it with RST (RFC 7641 §3.6: the relation ends); a NON
  notification reported ``"delivered"`` may still be reset later, under the same ref;
* ``"timeout"``: a CON notification was never acknowledged (every relation of the peer
  is presumed dead);
* ``"withdrawn"``: the application asked the datagram transport to stop retransmitting a
  CON notification not yet acknowledged (its device sleeps, ``core/power.py``), and it
  stopped: the notification was not heard, and the application may send it again later;
  an ACK or RST of it sent before the device slept may still come, and is reported under
  the same ref (``"ack"``, ``"reset"``): it was heard after all.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple, Optional, Tuple, Union

from ..core import codes
from .blocks import (LargeBody, Uploads, block_options, block_size_exponent, etag, slice_bert,
                     slice_response)
from .message import FETCH, GET, Message, make_response, set_options
from .options import (BERT, BERT_REFUSED, BLOCK1, CONTENT_FORMAT, OBSERVE, Block, Options,
                      bert_refusal, encode_uint, refusal)
from .peers import describe

ACKED, DELIVERED, RESET, TIMEOUT = "ack", "delivered", "reset", "timeout"
_new = tuple.__new__  # a NamedTuple from all its fields, without its __new__
WITHDRAWN = "withdrawn"
SMALL_ANSWER = 1024  # a payload this long goes in one message when no block is asked


class Incoming(NamedTuple):
    """A complete request for the application: who sent it, the message (with the whole
    body of a Block1 upload), the transport's state for an observe registration (or None),
    and the transport's own record of the exchange (opaque: handed back with the answer)."""

    peer: Hashable
    message: Message
    observation: Any = None
    context: Any = None


class Transmit(NamedTuple):
    """Bytes to send to ``peer``."""

    peer: Hashable
    data: bytes


class Notified(NamedTuple):
    """The fate of notification ``ref``: ``"ack"``, ``"delivered"``, ``"reset"``,
    ``"timeout"`` or ``"withdrawn"`` (see the module docstring)."""

    ref: int
    outcome: str


class Answer(NamedTuple):
    """What the application answers a request with: the response, whether the request
    carried a valid credential (no amplification limit then), a body read block by block
    instead of the response's payload, and ``quiet``: the device wants no answer to a
    non-confirmable request (RFC 7967's No-Response for a success: Efento's sensors), so
    a NON request gets none; a CON one, or one on a reliable connection, gets it."""

    message: Message
    authenticated: bool = False
    large: Optional[LargeBody] = None
    quiet: bool = False


Observation = Callable[[Message, float], Any]  # a registration -> the transport's state
BertPeer = Callable[[Hashable], bool]  # whether BERT is on with a peer
NO_BERT = b"BERT (block size exponent 7) needs Block-Wise-Transfer and a Max-Message-Size " \
    b"over 1152 in both CSMs (RFC 8323 section 6)"


class ExchangeLayer:
    """Requests and their answers for one transport endpoint (see the module docstring)."""

    def __init__(self, max_body: int, log: Any, observation: Optional[Observation] = None,
                 bert: Optional[BertPeer] = None):
        self.log = log  # debug like twisted.logger's Logger
        self.uploads = Uploads(max_body)
        self.observation = observation
        self.bert = bert

    def receive(self, peer: Hashable, message: Message, now: float,
                context: Any = None) -> Union[Incoming, Message]:
        """A request from ``peer``: the ``Incoming`` for the application, or the answer to
        send at once (a refused option, a Block1 block before the last)."""
        refused = refusal(message.options)
        if refused is not None:
            if refused is BERT_REFUSED and self.bert is not None:
                refused = self._bert_refusal(peer, message.options)
            if refused is not None:
                return self._refuse(peer, message, refused[0], refused[1])
        if message.option(BLOCK1) is not None:
            collected = self.uploads.collect(peer, message, message.block1, now)
            if not isinstance(collected, bytes):
                code, diagnostic, options = collected
                return self._refuse(peer, message, code, diagnostic, **options)
            message = message._replace(payload=collected)
        observation = None
        if (message.code == GET or message.code == FETCH) and self.observation is not None \
                and message.uint(OBSERVE) == 0:
            observation = self.observation(message, now)
        return _new(Incoming, (peer, message, observation, context))

    def response(self, incoming: Incoming, answer: Answer, room: Optional[int]) -> Message:
        """``answer`` to ``incoming`` as it goes (see the module docstring)."""
        request = incoming.message
        message = answer.message
        large = answer.large
        asked = request.block2
        if asked is not None or large is not None or len(message.payload) > SMALL_ANSWER \
                or (room is not None and message.payload):
            number = asked.number if asked is not None else 0
            size = large.size if large is not None else len(message.payload)
            message = slice_response(message, number, block_size_exponent(asked, room, size),
                                     large)
        block1 = request.option(BLOCK1)
        if block1 is not None and message.option(BLOCK1) is None:
            last = Block.decode(block1)._replace(more=False)
            message = set_options(message, [(BLOCK1, last.encode())])
        return _new(Message, (message.code, request.token, message.options, message.payload,
                              None, None))

    def _bert_refusal(self, peer: Hashable, options: Options) -> Optional[Tuple[int, bytes]]:
        """What to refuse in a request with a BERT Block option: nothing more where BERT is
        on with ``peer``, else 4.02 saying why."""
        assert self.bert is not None
        if self.bert(peer):
            return bert_refusal(options)
        return codes.BAD_OPTION, NO_BERT

    def bert_response(self, incoming: Incoming, answer: Answer, length: int) -> Message:
        """``answer`` to ``incoming`` on a connection where both ends offer BERT (RFC 8323
        §6): from the BERT block asked (or the first), ``length`` bytes (a multiple of
        1024, what the peer's Max-Message-Size takes), Block2 with SZX 7, ETag, Size2;
        whole when it fits; Block1 echoed for the last block of an upload."""
        request = incoming.message
        asked = request.block2
        message = slice_bert(answer.message, asked.number if asked is not None else 0, length,
                             answer.large)
        block1 = request.option(BLOCK1)
        if block1 is not None and message.option(BLOCK1) is None:
            last = Block.decode(block1)._replace(more=False)
            message = set_options(message, [(BLOCK1, last.encode())])
        return Message(message.code, request.token, message.options, message.payload)

    def refusal(self, incoming: Incoming, code: int, diagnostic: bytes = b"") -> Message:
        """``code`` with ``diagnostic`` (text) at once, as the answer to ``incoming``."""
        return self._refuse(incoming.peer, incoming.message, code, diagnostic)

    def _refuse(self, peer: Hashable, request: Message, code: int, diagnostic: bytes,
                **options: Any) -> Message:
        answer = make_response(code, diagnostic, codes.TEXT_PLAIN if diagnostic else None,
                          **options)
        self.log.debug("Answered {code} to {peer}: {reason}", peer=describe(peer),
                       code=codes.dotted(code), reason=diagnostic.decode(errors="replace"))
        return Message(answer.code, request.token, answer.options, answer.payload)

    @staticmethod
    def notification(token: bytes, code: int, payload: bytes, observe: int,
                     block_size: int = codes.BLOCK_SIZE,
                     content_format: int = codes.APPLICATION_JSON) -> Message:
        """An observe notification (RFC 7641 §4.2); longer than ``block_size``, its first
        block (RFC 7959 §2.6: the device GETs the others), a BERT block when
        ``block_size`` is a multiple of 1024 above it (RFC 8323 §6)."""
        options = [(OBSERVE, encode_uint(observe))]
        if payload:
            options.append((CONTENT_FORMAT, encode_uint(content_format)))
        if len(payload) <= block_size:
            return Message(code, token, tuple(options), payload)
        first = Message(code, token, tuple(options), payload[:block_size])
        szx = block_size.bit_length() - 5 if block_size <= codes.BLOCK_SIZE else BERT
        return block_options(first, 0, szx, len(payload), etag(payload))

    @staticmethod
    def observation_ended(token: bytes, code: int, diagnostic: bytes = b"",
                          max_age: Optional[int] = None) -> Message:
        """A notification ending the relation of ``token``: ``code`` (4.xx or 5.xx), a
        diagnostic text, no Observe option (RFC 7641 §3.2, §4.2)."""
        answer = make_response(code, diagnostic, codes.TEXT_PLAIN if diagnostic else None,
                               max_age)
        return Message(answer.code, token, answer.options, answer.payload)

    def next_timer(self) -> Optional[float]:
        """When ``handle_timer`` must run next (an upload expires), or None."""
        return self.uploads.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.uploads.expire(now)

    def close(self) -> None:
        self.uploads.clear()

