"""The CoAP message layer as a state machine without I/O (RFC 7252 §4, RFC 7959, RFC 7641).

``Endpoint`` takes datagrams and the time, and gives back datagrams to send
and requests to answer; it never reads a clock, opens a socket or schedules
a call (aioquic's ``receive_datagram`` / ``datagrams_to_send`` /
``get_timer`` / ``handle_timer`` is the model). A transport feeds it: the
UDP port (``bridge/edge/coap.py``) today, a DTLS session tomorrow, with the
session as the peer. Defect numbers refer to ../shared/spec/txthings-notes.md.

* W2  malformed datagrams are answered with RST when confirmable and
  otherwise dropped (``codec.inspect``); W3 options are refused (4.02, 5.05).
* W5  a request not answered within ``empty_ack_delay`` gets an empty ACK
  (CON only), then a separate CON response retransmitted until acknowledged
  (a GET asking for a block waits ``BLOCK_GET_ACK_DELAY``, see there). Two
  deadline queues serve every waiting request.
* W8  Block1 reassembly and Block2 slicing (``blocks``).
* W10 deduplication of (mid, peer) with the cached first answer (``dedup``).
* D28 CON exchanges are keyed by (mid, peer): an ACK from anyone else cannot
  stop a retransmission.
* RFC 7252 §11.3: an unauthenticated answer to a peer not known to receive
  what we send is at most ``AMPLIFICATION`` times its request; the rest goes
  block by block.

Peers are opaque and hashable: a (host, port) pair from UDP, or an object
with a ``key`` string (see ``Deduplicator.slot``). Outcomes of CON messages
sent with a ``ref`` (``"ack"``, ``"reset"``, ``"timeout"``) are collected for
the caller in ``outcomes``.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

import txthings.coap as txcoap

from ..core import codes
from . import codec
from .blocks import LargeBody, Uploads, block_size_exponent, slice_response
from .codec import ACK, CON, NON, RST, Malformed, Message, NotCoap, describe
from .dedup import Deduplicator

# A GET that asks for a block is downloading a long body (a package), and libcoap before
# 4.3.5 drops a first block that comes as a separate response ("large body receive
# internal issue", obgm/libcoap#1595): the download then hangs. So such a GET is answered
# in its ACK however long the answer takes, up to this many seconds (the client
# retransmits meanwhile, and duplicates are ignored), well before a client gives up
# (MAX_TRANSMIT_WAIT, 93 s); only then does it get the empty ACK. Other requests get
# theirs after ``empty_ack_delay``, as RFC 7252 §5.2.2 asks.
BLOCK_GET_ACK_DELAY = 30.0
SMALL_ANSWER = 1024  # a payload this long goes in one datagram when no block is asked
AMPLIFICATION = 3  # an unverified peer gets at most this many times its request's size
MAX_VERIFIED = 100_000  # peers remembered as verified
MAX_RECENT_NON = 4096  # NON messages sent with a ref, remembered to match an RST


@dataclass(frozen=True)
class EndpointSettings:
    empty_ack_delay: float = 0.5
    exchange_lifetime: float = txcoap.EXCHANGE_LIFETIME
    max_body: int = 65536
    ack_timeout: float = txcoap.ACK_TIMEOUT  # the CoAP ACK_TIMEOUT, not the broker's PUBACK
    max_retransmit: int = txcoap.MAX_RETRANSMIT


class Answer:
    """What a request handler answers: the response, whether the request carried a valid
    credential (no amplification limit then), and a body read block by block instead of
    the response's payload. No message: the request gets no answer (a NON one; a CON one
    only its ACK)."""

    __slots__ = ("message", "authenticated", "large")

    def __init__(self, message: Optional[Message], authenticated: bool = False,
                 large: Optional[LargeBody] = None):
        self.message = message
        self.authenticated = authenticated
        self.large = large


class Exchange:
    """A request being answered: the request, who sent it, and how it will be answered."""

    __slots__ = ("message", "peer", "slot", "size", "deadline", "separate", "answered")

    def __init__(self, message: Message, peer: Any, slot: Tuple[str, int], size: int,
                 deadline: float):
        self.message = message
        self.peer = peer
        self.slot = slot  # its deduplication key: its ACK is remembered under it
        self.size = size  # of the request datagram, for the amplification limit
        self.deadline = deadline  # of its empty ACK (CON)
        self.separate = False  # an empty ACK went: the answer goes as a separate CON
        self.answered = False


class _Confirmable:
    """A CON message of ours waiting for its ACK."""

    __slots__ = ("ref", "data", "peer", "count", "timeout", "deadline")

    def __init__(self, ref: Optional[int], data: bytes, peer: Any, timeout: float, now: float):
        self.ref = ref
        self.data = data
        self.peer = peer
        self.count = 0
        self.timeout = timeout
        self.deadline = now + timeout


class Endpoint:
    """One CoAP server endpoint (see the module docstring)."""

    def __init__(self, settings: EndpointSettings, rng: random.Random, log: Any, now: float):
        codec.install()
        self.settings = settings
        self.rng = rng
        self.log = log  # debug/info/warn like twisted.logger's Logger; nothing else
        self.dedup = Deduplicator(settings.exchange_lifetime)
        self.uploads = Uploads(settings.max_body)
        self.malformed = 0
        self.retransmissions = 0  # CON messages sent again (RFC 7252 §4.2)
        self.outgoing: List[Tuple[bytes, Any]] = []  # datagrams to send, in order
        self.outcomes: List[Tuple[int, str]] = []  # (ref, outcome) of CON/NON messages sent
        # Peers known to receive what we send (RFC 7252 §11.3): they acknowledged one of
        # our CON messages or asked for a later block of an answer.
        self.verified: "OrderedDict[Any, None]" = OrderedDict()
        self._mid = rng.randrange(65536)
        self._awaiting: Deque[Exchange] = deque()  # CON requests, in deadline order
        self._awaiting_blocks: Deque[Exchange] = deque()  # CON GETs of a block, likewise
        self._confirmables: Dict[Tuple[int, Any], _Confirmable] = {}
        self._retransmits: List[Tuple[float, int, Tuple[int, Any]]] = []  # a heap
        self._sequence = 0  # ties in the heap
        self._recent_non: "OrderedDict[Tuple[int, Any], int]" = OrderedDict()
        self._next_sweep = now + self.dedup.bucket

    # -- time ------------------------------------------------------------------------

    def next_timer(self) -> float:
        """When ``handle_timer`` must run next (never later than the next sweep)."""
        due = self._next_sweep
        awaiting = self._awaiting
        if awaiting and awaiting[0].deadline < due:
            due = awaiting[0].deadline
        awaiting = self._awaiting_blocks
        if awaiting and awaiting[0].deadline < due:
            due = awaiting[0].deadline
        if self._retransmits and self._retransmits[0][0] < due:
            due = self._retransmits[0][0]
        return due

    def handle_timer(self, now: float) -> None:
        """Send the empty ACKs and retransmissions that are due; forget what expired."""
        self._empty_acks(now)
        self._retransmit(now)
        if now >= self._next_sweep:
            self.dedup.sweep(now)
            self.uploads.expire(now)
            self._next_sweep = now + self.dedup.bucket

    def close(self) -> None:
        """Forget every exchange in progress (the transport is going away)."""
        self._awaiting.clear()
        self._awaiting_blocks.clear()
        self._confirmables.clear()
        self._retransmits.clear()
        self.uploads.clear()

    def datagrams_to_send(self) -> List[Tuple[bytes, Any]]:
        out, self.outgoing = self.outgoing, []
        return out

    # -- datagrams in ------------------------------------------------------------------

    def receive_datagram(self, data: bytes, peer: Any, now: float) -> Optional[Exchange]:
        """Take one datagram; the request to answer (with ``respond``), if it is one."""
        try:
            message, numbers = codec.decode(data, peer)
        except NotCoap as exc:
            self._malformed(peer, str(exc))
            return None
        except Malformed as exc:
            self._malformed(peer, str(exc))
            if (data[0] >> 4) & 0x03 == CON:
                self.outgoing.append((bytes([0x70, 0, data[2], data[3]]), peer))
            return None
        mtype = message.mtype
        slot = None
        if mtype == CON or mtype == NON:
            slot = self.dedup.slot(message.mid, peer)
            if self.dedup.seen(slot, now):
                self._duplicate(message, slot, peer)
                return None
        code = message.code
        if 1 <= code < 32:
            if mtype != CON and mtype != NON:
                self._malformed(peer, "request code in an ACK or RST")
                return None
            return self._request(message, numbers, peer, slot, len(data), now)
        if mtype == ACK or mtype == RST:
            if self._answered(message.mid, peer, mtype):
                self.verify(peer)
            return None
        if code >= 64 or mtype == CON:  # a response we did not ask for, or a CON ping
            self._send(Message(mtype=RST, mid=message.mid, code=txcoap.EMPTY), peer, slot)
        return None

    def _request(self, message: Message, numbers: List[int], peer: Any, slot: Any, size: int,
                 now: float) -> Optional[Exchange]:
        exchange = Exchange(message, peer, slot, size, now + self.settings.empty_ack_delay)
        block1, block2 = message.opt.block1, message.opt.block2
        rejected = codec.rejected_options(numbers, block1, block2)
        if rejected is not None:
            self.answer(exchange, now, *rejected)
            return None
        if block1 is not None:
            collected = self.uploads.collect(message, block1, now)
            if not isinstance(collected, bytes):
                code, diagnostic, options = collected
                self.answer(exchange, now, code, diagnostic, **options)
                return None
            message.payload = collected
        if message.mtype == CON:
            if block2 is not None and message.code == txcoap.GET:
                exchange.deadline = now + BLOCK_GET_ACK_DELAY
                self._awaiting_blocks.append(exchange)
            else:
                self._awaiting.append(exchange)
        return exchange

    def _duplicate(self, message: Message, slot: Tuple[str, int], peer: Any) -> None:
        cached = self.dedup.response(slot)
        if message.mtype == CON and cached is not None:
            self.outgoing.append((cached, peer))
        self.log.debug("Duplicate {mtype} mid {mid} from {peer}", mtype=txcoap.types[message.mtype],
                       mid=message.mid, peer=describe(peer))

    def _malformed(self, peer: Any, reason: str) -> None:
        self.malformed += 1
        self.log.debug("Malformed datagram from {peer}: {reason}", peer=describe(peer),
                       reason=reason)

    # -- answers -----------------------------------------------------------------------

    def respond(self, exchange: Exchange, response: Optional[Message], now: float,
                authenticated: bool = False, large: Optional[LargeBody] = None) -> None:
        """Answer ``exchange`` with ``response`` (its payload, or ``large``), block by block
        as the request asks (RFC 7959); ``authenticated``: the request carried a valid
        credential, so no amplification limit applies."""
        if exchange.answered:
            return
        request = exchange.message
        if response is None:  # no answer (RFC 7967 No-Response): a CON still gets its ACK
            exchange.answered = True
            if request.mtype == CON and not exchange.separate:
                self._send(Message(mtype=ACK, mid=request.mid, code=txcoap.EMPTY),
                           exchange.peer, exchange.slot)
            return
        asked = request.opt.block2
        if asked is None and large is None and len(response.payload) <= SMALL_ANSWER:
            # the common answer goes as it is: no block asked, one block long, and either
            # empty or to a peer no amplification limit applies to
            if authenticated or not response.payload or exchange.peer in self.verified:
                self._send_response(exchange, response, True, now)
                return
        number = asked.block_number if asked is not None else 0
        if number > 0:
            self.verify(exchange.peer)  # it got block 0, so it receives what we send
        room = None
        if not authenticated and exchange.peer not in self.verified:
            room = AMPLIFICATION * exchange.size - 32 - len(request.token)
        size = large.size if large is not None else len(response.payload)
        szx = block_size_exponent(asked, room, size)
        self._send_response(exchange, slice_response(response, number, szx, large), True, now)

    def answer(self, exchange: Exchange, now: float, code: int, diagnostic: bytes = b"",
               **options: Any) -> None:
        """Answer at once with a code and diagnostic text (``options``: as ``make_response``)."""
        response = codec.make_response(code, diagnostic,
                                       codes.TEXT_PLAIN if diagnostic else None, **options)
        self._send_response(exchange, response, False, now)
        self.log.debug("Answered {code} to {peer}: {reason}", peer=describe(exchange.peer),
                       code=codes.dotted(code), reason=diagnostic.decode(errors="replace"))

    def _send_response(self, exchange: Exchange, response: Message, echo_block1: bool,
                       now: float) -> None:
        exchange.answered = True
        request = exchange.message
        response.token = request.token
        if echo_block1 and request.opt.block1 is not None and response.opt.block1 is None:
            block1 = request.opt.block1
            response.opt.block1 = (block1.block_number, False, block1.size_exponent)
        if request.mtype == NON:
            response.mtype = NON
        elif exchange.separate:
            response.mtype = CON  # separate response after the empty ACK
            self.send(response, exchange.peer, now)
            return
        else:
            response.mtype = ACK
            response.mid = request.mid
        self._send(response, exchange.peer, exchange.slot)

    def _empty_acks(self, now: float) -> None:
        for awaiting in (self._awaiting, self._awaiting_blocks):
            # past its deadline, or answered already (no need to wake for it later)
            while awaiting and (awaiting[0].deadline <= now or awaiting[0].answered):
                exchange = awaiting.popleft()
                if not exchange.answered:
                    exchange.separate = True  # the answer follows as a separate CON
                    self._send(Message(mtype=ACK, mid=exchange.message.mid,
                                       code=txcoap.EMPTY), exchange.peer, exchange.slot)

    # -- messages out ----------------------------------------------------------------

    def send(self, message: Message, peer: Any, now: float, ref: Optional[int] = None) -> None:
        """Send ``message``; a CON one is retransmitted until acknowledged (RFC 7252 §4.2)."""
        if message.mid is None:
            message.mid = self._next_mid()
        data = message.encode()
        self.outgoing.append((data, peer))
        key = (message.mid, peer)
        if message.mtype == CON:
            settings = self.settings
            timeout = self.rng.uniform(settings.ack_timeout,
                                       settings.ack_timeout * txcoap.ACK_RANDOM_FACTOR)
            pending = _Confirmable(ref, data, peer, timeout, now)
            self._confirmables[key] = pending
            self._schedule(pending.deadline, key)
        elif ref is not None:
            self._recent_non[key] = ref
            if len(self._recent_non) > MAX_RECENT_NON:
                self._recent_non.popitem(last=False)

    def notify(self, ref: int, peer: Any, token: bytes, confirmable: bool, code: int,
               payload: bytes, observe: int, now: float, block_size: int = codes.BLOCK_SIZE,
               content_format: int = codes.APPLICATION_JSON) -> None:
        """An observe notification (RFC 7641); longer than ``block_size``, its first block
        (RFC 7959 §2.6: the device GETs the others)."""
        message = Message(mtype=CON if confirmable else NON, code=code, payload=payload,
                          token=token)
        message.opt.observe = observe
        if payload:
            message.opt.content_format = content_format
        if len(payload) > block_size:
            message.payload = payload[:block_size]
            codec.mark_block(message, 0, block_size.bit_length() - 5, len(payload),
                             codec.etag(payload))
        self.send(message, peer, now, ref)

    def _send(self, message: Message, peer: Any, slot: Optional[Tuple[str, int]] = None) -> None:
        """Send an ACK, RST or NON message (a CON one goes through ``send``); an ACK or RST
        is remembered as the answer to duplicates of its request (``slot``: its key, if
        known already)."""
        if message.mtype == CON:
            raise ValueError("CON messages go through send()")  # they need a time
        if message.mid is None:
            message.mid = self._next_mid()
        data = message.encode()
        self.outgoing.append((data, peer))
        if message.mtype == ACK or message.mtype == RST:
            self.dedup.remember_response(slot if slot is not None
                                         else self.dedup.slot(message.mid, peer), data)

    def _next_mid(self) -> int:
        mid = self._mid
        self._mid = (mid + 1) & 0xFFFF
        return mid

    def _schedule(self, deadline: float, key: Tuple[int, Any]) -> None:
        self._sequence += 1
        heapq.heappush(self._retransmits, (deadline, self._sequence, key))

    def _answered(self, mid: int, peer: Any, mtype: int) -> bool:
        key = (mid, peer)
        pending = self._confirmables.pop(key, None)
        if pending is not None:
            if pending.ref is not None:
                self.outcomes.append((pending.ref, "ack" if mtype == ACK else "reset"))
            return True
        ref = self._recent_non.pop(key, None)
        if ref is not None and mtype == RST:
            self.outcomes.append((ref, "reset"))
            return True
        return False

    def _retransmit(self, now: float) -> None:
        heap = self._retransmits
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            pending = self._confirmables.get(key)
            if pending is None or pending.deadline != deadline:
                continue  # acknowledged meanwhile
            if pending.count >= self.settings.max_retransmit:
                del self._confirmables[key]
                self.log.info("CON message to {peer} unacknowledged after {count} "
                              "retransmissions", peer=describe(pending.peer), count=pending.count)
                if pending.ref is not None:
                    self.outcomes.append((pending.ref, "timeout"))
                continue
            self.outgoing.append((pending.data, pending.peer))
            self.retransmissions += 1
            pending.count += 1
            pending.timeout *= 2
            pending.deadline = now + pending.timeout
            self._schedule(pending.deadline, key)

    def withdraw(self, ref: int) -> bool:
        """Stop retransmitting the CON notification sent with ``ref`` (its device sleeps);
        no outcome of it is reported. False if it is not waiting for its ACK."""
        for key, pending in self._confirmables.items():
            if pending.ref == ref:
                del self._confirmables[key]  # its retransmission timer finds nothing
                return True
        return False

    # -- peers -------------------------------------------------------------------------

    def verify(self, peer: Any) -> None:
        """``peer`` is known to receive what we send (no amplification limit)."""
        self.verified[peer] = None
        self.verified.move_to_end(peer)
        while len(self.verified) > MAX_VERIFIED:
            self.verified.popitem(last=False)
