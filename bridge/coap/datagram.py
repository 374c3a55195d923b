"""The CoAP message layer for datagram transports (UDP, DTLS), without I/O (RFC 7252 §4).

``MessageLayer`` takes datagrams and the time, and hands out frozen events from
``next_event()``: ``Transmit`` (a datagram for a peer), ``Incoming`` (a request for
the application, answered with ``respond``) and ``Notified`` (a notification's fate);
it never reads a clock, opens a socket or schedules a call (aioquic's
``receive_datagram`` / ``get_timer`` / ``handle_timer`` is the model: ``next_timer``
says when to call ``handle_timer``). Everything above message types and Message IDs
(options, tokens, blocks, observe registrations) is the exchange layer's
(``exchange.py``), which this layer owns and feeds. Defect numbers refer to
../shared/spec/txthings-notes.md.

* W2  malformed datagrams are answered with RST when confirmable and otherwise
  dropped (``message.decode``).
* W5  a CON request not answered within ``empty_ack_delay`` gets an empty ACK, then a
  separate CON response retransmitted until acknowledged (a GET asking for a block
  waits ``BLOCK_GET_ACK_DELAY``, see there); NON requests get NON answers. Two
  deadline queues serve every waiting request.
* W10 deduplication of (mid, peer) with the cached first answer (``dedup``).
* D28 CON messages of ours are keyed by (mid, peer): an ACK from anyone else cannot
  stop a retransmission. An RST to a recent NON notification is matched the same way.
* RFC 7252 §11.3: an unauthenticated answer to a peer not known to receive what we
  send is at most ``AMPLIFICATION`` times its request; the rest goes block by block.
* RFC 7641 §4.5: a notification goes CON when its relation was registered by a CON
  request, and otherwise NON, except that one in every ``con_interval`` seconds goes
  CON so that a NON observer that is gone is found too. The state for this is an
  ``Observation`` made for each registration (the exchange layer asks for it), kept by
  the application with its relation and handed back with each notification.

Peers are opaque and hashable: a (host, port) pair from UDP, or an object with a
``key`` string (a DTLS session, see ``Deduplicator.slot``).
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Hashable, List, Optional, Tuple, Union

from ..core import codes
from .dedup import Deduplicator, Slot
from .exchange import (ACKED, DELIVERED, RESET, TIMEOUT, WITHDRAWN, Answer, ExchangeLayer,
                       Incoming, Notified, Transmit)
from .message import ACK, CON, EMPTY, GET, NON, RST, TYPES, Message, decode, empty, encode
from .options import BLOCK2, Malformed, NotCoap
from .peers import describe

# RFC 7252 §4.8 transmission parameters
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
EXCHANGE_LIFETIME = 247.0

# A GET that asks for a block is downloading a long body (a package), and libcoap before
# 4.3.5 drops a first block that comes as a separate response ("large body receive
# internal issue", obgm/libcoap#1595): the download then hangs. So such a GET is answered
# in its ACK however long the answer takes, up to this many seconds (the client
# retransmits meanwhile, and duplicates are ignored), well before a client gives up
# (MAX_TRANSMIT_WAIT, 93 s); only then does it get the empty ACK. Other requests get
# theirs after ``empty_ack_delay``, as RFC 7252 §5.2.2 asks.
BLOCK_GET_ACK_DELAY = 30.0
AMPLIFICATION = 3  # an unverified peer gets at most this many times its request's size
MAX_VERIFIED = 100_000  # peers remembered as verified
MAX_RECENT_NON = 4096  # NON notifications remembered to match an RST

Event = Union[Transmit, Incoming, Notified]


@dataclass(frozen=True)
class DatagramSettings:
    empty_ack_delay: float = 0.5
    exchange_lifetime: float = EXCHANGE_LIFETIME
    max_body: int = 65536
    ack_timeout: float = ACK_TIMEOUT  # the CoAP ACK_TIMEOUT, not the broker's PUBACK
    max_retransmit: int = MAX_RETRANSMIT
    con_interval: float = 86400.0  # at least one CON notification per relation this often


class Observation:
    """The datagram state of one observe relation: the registration's type and the last
    CON notification. Made here, kept by the application, changed only here."""

    __slots__ = ("confirmable", "last_con")

    def __init__(self, confirmable: bool, last_con: float):
        self.confirmable = confirmable
        self.last_con = last_con

    def __repr__(self) -> str:
        return "Observation(%s, last CON at %s)" % ("CON" if self.confirmable else "NON",
                                                    self.last_con)


class _Exchange:
    """Our record of a request being answered (``Incoming.context``)."""

    __slots__ = ("peer", "mtype", "mid", "slot", "size", "deadline", "separate", "answered")

    def __init__(self, peer: Hashable, mtype: int, mid: int, slot: Slot, size: int,
                 deadline: float):
        self.peer = peer
        self.mtype = mtype
        self.mid = mid
        self.slot = slot  # its deduplication key: its ACK is remembered under it
        self.size = size  # of the request datagram, for the amplification limit
        self.deadline = deadline  # of its empty ACK (CON)
        self.separate = False  # an empty ACK went: the answer goes as a separate CON
        self.answered = False


class _Confirmable:
    """A CON message of ours waiting for its ACK."""

    __slots__ = ("ref", "data", "peer", "count", "timeout", "deadline")

    def __init__(self, ref: Optional[int], data: bytes, peer: Hashable, timeout: float,
                 now: float):
        self.ref = ref
        self.data = data
        self.peer = peer
        self.count = 0
        self.timeout = timeout
        self.deadline = now + timeout


class MessageLayer:
    """One CoAP endpoint's message layer (see the module docstring)."""

    def __init__(self, settings: DatagramSettings, rng: random.Random, log: Any, now: float):
        self.settings = settings
        self.rng = rng
        self.log = log  # debug/info like twisted.logger's Logger; nothing else
        self.exchanges = ExchangeLayer(settings.max_body, log, self._observation)
        self.dedup = Deduplicator(settings.exchange_lifetime)
        self.malformed = 0  # datagrams dropped or reset as malformed
        self.retransmissions = 0  # CON messages sent again (RFC 7252 §4.2)
        self._events: Deque[Event] = deque()
        # Peers known to receive what we send (RFC 7252 §11.3): they acknowledged one of
        # our CON messages or asked for a later block of an answer.
        self._verified: "OrderedDict[Hashable, None]" = OrderedDict()
        self._mid = rng.randrange(65536)
        self._awaiting: Deque[_Exchange] = deque()  # CON requests, in deadline order
        self._awaiting_blocks: Deque[_Exchange] = deque()  # CON GETs of a block, likewise
        self._confirmables: Dict[Tuple[int, Hashable], _Confirmable] = {}
        self._retransmits: List[Tuple[float, int, Tuple[int, Hashable]]] = []  # a heap
        self._sequence = 0  # ties in the heap
        self._recent_non: "OrderedDict[Tuple[int, Hashable], int]" = OrderedDict()
        # CON notifications withdrawn (power saving), so that an ACK already on its way
        # still counts: the device heard it
        self._withdrawn: "OrderedDict[Tuple[int, Hashable], int]" = OrderedDict()
        self._next_sweep = now + self.dedup.bucket

    def next_event(self) -> Optional[Event]:
        """The next event, in order, or None once there is none."""
        return self._events.popleft() if self._events else None

    def events(self) -> List[Event]:
        """Every event so far, in order (the same as ``next_event`` until None, at once)."""
        if not self._events:
            return []
        events = list(self._events)
        self._events.clear()
        return events

    def put_back(self, events: List[Event]) -> None:
        """Events taken with ``events()`` and not carried out: first in line again."""
        self._events.extendleft(reversed(events))

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
            self.exchanges.handle_timer(now)
            self._next_sweep = now + self.dedup.bucket

    def close(self) -> None:
        """Forget every exchange in progress (the transport is going away)."""
        self._awaiting.clear()
        self._awaiting_blocks.clear()
        self._confirmables.clear()
        self._retransmits.clear()
        self.exchanges.close()

    # -- datagrams in ------------------------------------------------------------------

    def receive_datagram(self, data: bytes, peer: Hashable, now: float) -> None:
        """Take one datagram from ``peer``."""
        try:
            message = decode(data)
        except NotCoap as exc:
            self._malformed(peer, str(exc))
            return
        except Malformed as exc:
            self._malformed(peer, str(exc))
            if (data[0] >> 4) & 0x03 == CON:
                self._events.append(Transmit(peer, empty(RST, (data[2] << 8) | data[3])))
            return
        mtype = message.mtype
        if mtype == CON or mtype == NON:
            slot = self.dedup.slot(message.mid, peer)
            if self.dedup.seen(slot, now):
                self._duplicate(message, slot, peer)
                return
            code = message.code
            if 1 <= code < 32:
                self._request(message, peer, slot, len(data), now)
            elif code >= 64 or mtype == CON:  # a response we did not ask for, or a CON ping
                self._reply(peer, RST, message.mid, Message(EMPTY), slot)
            return
        if 1 <= message.code < 32:
            self._malformed(peer, "request code in an ACK or RST")
            return
        if self._answered(message.mid, peer, mtype):
            self.verify(peer)

    def _request(self, message: Message, peer: Hashable, slot: Slot, size: int,
                 now: float) -> None:
        record = _Exchange(peer, message.mtype, message.mid, slot, size,  # type: ignore
                           now + self.settings.empty_ack_delay)
        result = self.exchanges.receive(peer, message, now, record)
        if type(result) is not Incoming:
            self._answer(record, result, now)  # type: ignore[arg-type]
            return
        if record.mtype == CON:
            if message.code == GET and message.option(BLOCK2) is not None:
                record.deadline = now + BLOCK_GET_ACK_DELAY
                self._awaiting_blocks.append(record)
            else:
                self._awaiting.append(record)
        self._events.append(result)  # type: ignore[arg-type]

    def _observation(self, message: Message, now: float) -> Observation:
        return Observation(message.mtype == CON, now)

    def _duplicate(self, message: Message, slot: Slot, peer: Hashable) -> None:
        cached = self.dedup.response(slot)
        if message.mtype == CON and cached is not None:
            self._events.append(Transmit(peer, cached))
        self.log.debug("Duplicate {mtype} mid {mid} from {peer}", mtype=TYPES[message.mtype],
                       mid=message.mid, peer=describe(peer))

    def _malformed(self, peer: Hashable, reason: str) -> None:
        self.malformed += 1
        self.log.debug("Malformed datagram from {peer}: {reason}", peer=describe(peer),
                       reason=reason)

    # -- answers -----------------------------------------------------------------------

    def respond(self, incoming: Incoming, answer: Answer, now: float) -> None:
        """Answer ``incoming`` (once; later answers are ignored): in the ACK, after an
        empty ACK as a separate CON, or as NON to a NON request."""
        record: _Exchange = incoming.context
        if record.answered:
            return
        if answer.quiet and record.mtype == NON:
            record.answered = True  # no answer at all (``Answer.quiet``)
            return
        peer = record.peer
        room = None
        asked = incoming.message.block2
        if asked is not None and asked.number > 0:
            self.verify(peer)  # it got block 0, so it receives what we send
        elif not answer.authenticated and peer not in self._verified:
            room = AMPLIFICATION * record.size - 32 - len(incoming.message.token)
        self._answer(record, self.exchanges.response(incoming, answer, room), now)

    def refuse(self, incoming: Incoming, code: int, diagnostic: bytes, now: float) -> None:
        """Answer ``incoming`` with ``code`` and a diagnostic text (once)."""
        record: _Exchange = incoming.context
        if not record.answered:
            self._answer(record, self.exchanges.refusal(incoming, code, diagnostic), now)

    def _answer(self, record: _Exchange, message: Message, now: float) -> None:
        record.answered = True
        if record.mtype == NON:
            self._events.append(Transmit(record.peer, encode(NON, self._next_mid(), message)))
        elif record.separate:
            self._send_con(message, record.peer, now, None)  # after the empty ACK
        else:
            self._reply(record.peer, ACK, record.mid, message, record.slot)

    def _empty_acks(self, now: float) -> None:
        for awaiting in (self._awaiting, self._awaiting_blocks):
            # past its deadline, or answered already (no need to wake for it later)
            while awaiting and (awaiting[0].deadline <= now or awaiting[0].answered):
                record = awaiting.popleft()
                if not record.answered:
                    record.separate = True  # the answer follows as a separate CON
                    self._reply(record.peer, ACK, record.mid, Message(EMPTY), record.slot)

    def _reply(self, peer: Hashable, mtype: int, mid: int, message: Message,
               slot: Slot) -> None:
        """An ACK or RST to message ``mid``, remembered as the answer to its duplicates."""
        data = encode(mtype, mid, message)
        self._events.append(Transmit(peer, data))
        self.dedup.remember_response(slot, data)

    # -- notifications -----------------------------------------------------------------

    def notify(self, ref: int, peer: Hashable, token: bytes, code: int, payload: bytes,
               observe: int, observation: Optional[Observation], now: float,
               block_size: int = codes.BLOCK_SIZE,
               content_format: int = codes.APPLICATION_JSON) -> None:
        """Notification ``ref`` of the relation of ``observation`` (None: unknown, CON),
        CON or NON as RFC 7641 §4.5 allows (see the module docstring); its fate comes as
        ``Notified(ref, ...)``."""
        message = self.exchanges.notification(token, code, payload, observe, block_size,
                                              content_format)
        if observation is None or observation.confirmable \
                or now - observation.last_con >= self.settings.con_interval:
            if observation is not None:
                observation.last_con = now
            self._send_con(message, peer, now, ref)
            return
        mid = self._next_mid()
        self._events.append(Transmit(peer, encode(NON, mid, message)))
        self._events.append(Notified(ref, DELIVERED))
        recent = self._recent_non
        recent[(mid, peer)] = ref
        if len(recent) > MAX_RECENT_NON:
            recent.popitem(last=False)

    def end_observation(self, peer: Hashable, token: bytes, code: int, diagnostic: bytes,
                        now: float, max_age: Optional[int] = None) -> None:
        """Tell ``peer`` that its relation of ``token`` ended (``code``, no Observe: RFC
        7641 §4.2), as CON, retransmitted until acknowledged; no ``Notified`` follows (the
        application has forgotten the relation already)."""
        self._send_con(self.exchanges.observation_ended(token, code, diagnostic, max_age),
                       peer, now, None)

    # -- CON messages of ours ----------------------------------------------------------

    def _send_con(self, message: Message, peer: Hashable, now: float,
                  ref: Optional[int]) -> None:
        """Send ``message`` as CON, retransmitted until acknowledged (RFC 7252 §4.2)."""
        mid = self._next_mid()
        data = encode(CON, mid, message)
        self._events.append(Transmit(peer, data))
        settings = self.settings
        timeout = self.rng.uniform(settings.ack_timeout, settings.ack_timeout * ACK_RANDOM_FACTOR)
        pending = _Confirmable(ref, data, peer, timeout, now)
        key = (mid, peer)
        self._confirmables[key] = pending
        self._schedule(pending.deadline, key)

    def _next_mid(self) -> int:
        mid = self._mid
        self._mid = (mid + 1) & 0xFFFF
        return mid

    def _schedule(self, deadline: float, key: Tuple[int, Hashable]) -> None:
        self._sequence += 1
        heapq.heappush(self._retransmits, (deadline, self._sequence, key))

    def _answered(self, mid: int, peer: Hashable, mtype: int) -> bool:
        """An empty ACK or RST: True when it matches a CON or NON message of ours."""
        key = (mid, peer)
        pending = self._confirmables.pop(key, None)
        if pending is not None:
            if pending.ref is not None:
                self._events.append(Notified(pending.ref, ACKED if mtype == ACK else RESET))
            return True
        ref = self._withdrawn.pop(key, None)
        if ref is not None:  # heard after all: its ACK (or RST) was on its way
            self._events.append(Notified(ref, ACKED if mtype == ACK else RESET))
            return True
        ref = self._recent_non.pop(key, None)
        if ref is not None and mtype == RST:
            self._events.append(Notified(ref, RESET))
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
                self.log.info("CON message to {peer} unacknowledged after "
                              "{count:plural:retransmission}", peer=describe(pending.peer),
                              count=pending.count)
                if pending.ref is not None:
                    self._events.append(Notified(pending.ref, TIMEOUT))
                continue
            self._events.append(Transmit(pending.peer, pending.data))
            self.retransmissions += 1
            pending.count += 1
            pending.timeout *= 2
            pending.deadline = now + pending.timeout
            self._schedule(pending.deadline, key)

    def withdraw(self, ref: int, peer: Hashable) -> bool:
        """Stop retransmitting CON notification ``ref`` to ``peer`` (its device sleeps,
        power saving): its fate is ``Notified(ref, "withdrawn")``, and an ACK (or RST) of
        it that comes later, sent before the device slept, is reported under the same ref
        ("ack", "reset"): it was heard. False when it is not waiting for its ACK (its fate
        came already, or it went NON). A scan of the CON messages waiting: it happens when
        a device falls asleep with one unacknowledged, rarely."""
        for key, pending in self._confirmables.items():
            if pending.ref == ref and key[1] == peer:
                del self._confirmables[key]  # its retransmission finds nothing
                self._events.append(Notified(ref, WITHDRAWN))
                withdrawn = self._withdrawn
                withdrawn[key] = ref
                if len(withdrawn) > MAX_RECENT_NON:
                    withdrawn.popitem(last=False)
                return True
        return False

    # -- peers -------------------------------------------------------------------------

    def verify(self, peer: Hashable) -> None:
        """``peer`` is known to receive what we send (no amplification limit)."""
        verified = self._verified
        verified[peer] = None
        verified.move_to_end(peer)
        while len(verified) > MAX_VERIFIED:
            verified.popitem(last=False)

    def verified(self, peer: Hashable) -> bool:
        return peer in self._verified

    def forget(self, peer: Hashable) -> None:
        """``peer`` is gone (a DTLS session ended): it is no longer known to receive."""
        self._verified.pop(peer, None)
