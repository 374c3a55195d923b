"""One CoAP connection over TCP, TLS or WebSockets as a state machine without I/O
(RFC 8323 §3-§5).

``Connection`` takes the bytes (or, over WebSockets, the messages) a transport
received with the time, and gives back events and the bytes to write; it
never reads a clock, opens a socket or schedules a call (the UDP endpoint's
shape, after h11 and aioquic). What it does:

* sends our CSM (Max-Message-Size, Block-Wise-Transfer) first, on creation;
  ``bert`` says whether both CSMs offer BERT (RFC 8323 §6);
* requires the peer's CSM before anything else (§5.3: a missing CSM is a
  connection error) and within ``csm_timeout`` seconds: else Abort;
* answers a Ping with a Pong at once, or, when the Ping asks for Custody, once
  every request received before it has been answered (§5.4);
* a peer's Release: no new requests are taken, and the connection ends once
  those in progress are answered (§5.5); a peer's Abort ends it at once;
* a framing or signalling error (``framing``, ``signalling``) sends Abort with
  a diagnostic payload and ends the connection (§5.6);
* a message over our Max-Message-Size is never buffered: a request becomes
  ``TooLarge`` (to be answered 4.13), anything else an Abort;
* timers: a Ping after ``keepalive`` seconds without a byte from the peer, and
  Release after ``idle_timeout`` seconds of that silence (a live peer answers
  the Pings, so only a gone one is released).

Requests and responses are handed out as ``Received`` frames and sent with
``send``; the request/response layer above (tokens, blocks, observe) is the
caller's. There are no Message IDs, types, ACKs or retransmissions here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, NamedTuple, Optional, Union

from . import signalling as sig
from .framing import Frame, FramingError, Oversized, StreamDecoder, decode_ws, encode, encode_ws


@dataclass(frozen=True)
class ReliableSettings:
    max_message_size: int = 65536  # advertised in our CSM (a whole message, header included)
    block_wise: bool = True  # advertise Block-Wise-Transfer (with a size > 1152: BERT too)
    csm_timeout: float = 10.0  # s for the peer's CSM to arrive
    keepalive: float = 60.0  # s of silence before a Ping (0: never)
    idle_timeout: float = 300.0  # s of silence before a Release (0: never)


class Received(NamedTuple):
    """A request (or response) from the peer."""

    frame: Frame


class TooLarge(NamedTuple):
    """A request over our Max-Message-Size, skipped: answer it 4.13."""

    code: int
    token: bytes
    size: int


class Ended(NamedTuple):
    """The connection is over: write what is left, then close. ``error``: aborted (ours
    or the peer's) rather than released or closed."""

    reason: str
    error: bool


Event = Union[Received, TooLarge, Ended]


class Connection:
    """One reliable CoAP connection (see the module docstring)."""

    def __init__(self, settings: ReliableSettings, now: float, websocket: bool = False):
        self.settings = settings
        self.websocket = websocket
        self.peer_max_message_size = sig.BASE_MAX_MESSAGE_SIZE
        self.peer_block_wise = False
        self.peer_csm = False  # its CSM came
        self.ended: Optional[Ended] = None
        self.released_by_peer = False
        self.last_heard = now  # any byte from the peer
        self._pinged = now  # our last Ping (or the start)
        self._csm_due = now + settings.csm_timeout
        self._out: List[bytes] = []
        self._decoder = None if websocket else StreamDecoder(settings.max_message_size)
        self._serial = 0  # requests received so far
        self._outstanding: Dict[bytes, Deque[int]] = {}  # token -> serials not answered
        self._custody: List[tuple] = []  # (Ping token, serial) waiting for answers
        self._encode = encode_ws if websocket else encode
        self._send(sig.CSM, b"", sig.csm_body(settings.max_message_size, settings.block_wise))

    @property
    def bert(self) -> bool:
        """Both CSMs offer BERT (RFC 8323 §5.3.2, §6): Block-Wise-Transfer with a
        Max-Message-Size over 1152, ours and the peer's."""
        settings = self.settings
        return self.peer_block_wise and settings.block_wise and \
            self.peer_max_message_size > sig.BASE_MAX_MESSAGE_SIZE and \
            settings.max_message_size > sig.BASE_MAX_MESSAGE_SIZE

    # -- in --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> List[Event]:
        """Bytes from a TCP or TLS stream."""
        if self.ended is not None or not data:
            return []
        self.last_heard = now
        assert self._decoder is not None
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            return self._taken([], now) + self.abort(str(exc))
        return self._taken(frames, now)

    def receive_message(self, data: bytes, now: float, size: Optional[int] = None) -> List[Event]:
        """One WebSocket binary message; ``size``: its length when ``data`` is only its
        first bytes (the transport stopped buffering a message over our
        Max-Message-Size)."""
        if self.ended is not None:
            return []
        self.last_heard = now
        size = len(data) if size is None else size
        if size > self.settings.max_message_size:
            try:
                head = decode_ws(data[:10])
            except FramingError as exc:
                return self.abort(str(exc))
            return self._taken([Oversized(head.code, head.token, size)], now)
        try:
            frame = decode_ws(data)
        except FramingError as exc:
            return self.abort(str(exc))
        return self._taken([frame], now)

    def _taken(self, frames: List[Union[Frame, Oversized]], now: float) -> List[Event]:
        events: List[Event] = []
        for frame in frames:
            if self.ended is not None:
                break
            if isinstance(frame, Oversized):
                self._oversized(frame, events)
            else:
                self._frame(frame, events)
        return events

    def _frame(self, frame: Frame, events: List[Event]) -> None:
        code = frame.code
        cls = code >> 5
        if code == 0:
            return  # an empty message: always allowed, always ignored (§3.4)
        if cls == sig.SIGNAL_CLASS:
            self._signal(frame, events)
            return
        if not self.peer_csm:
            events += self.abort("%s before the peer's CSM" % (
                "a request" if cls == 0 else "message %d.%02d" % (cls, code & 0x1F)))
            return
        if cls in (1, 3, 6):
            events += self.abort("reserved code %d.%02d" % (cls, code & 0x1F))
            return
        if cls == 0:
            if self.released_by_peer:
                return  # it said it sends no more requests
            self._serial += 1
            self._outstanding.setdefault(frame.token, deque()).append(self._serial)
        events.append(Received(frame))

    def _oversized(self, frame: Oversized, events: List[Event]) -> None:
        if self.peer_csm and 1 <= frame.code < 32 and not self.released_by_peer:
            self._serial += 1
            self._outstanding.setdefault(frame.token, deque()).append(self._serial)
            events.append(TooLarge(frame.code, frame.token, frame.size))
        else:
            events += self.abort("message of %d bytes over our Max-Message-Size %d"
                                 % (frame.size, self.settings.max_message_size))

    def _signal(self, frame: Frame, events: List[Event]) -> None:
        try:
            signal = sig.parse(frame)
        except sig.SignalError as exc:
            events += self.abort(exc.reason, exc.option)
            return
        if not self.peer_csm and signal.code != sig.CSM:
            events += self.abort("%s before the peer's CSM" % sig.NAMES[signal.code])
            return
        code = signal.code
        if code == sig.CSM:
            size = signal.uint(sig.MAX_MESSAGE_SIZE)
            if size is not None:
                self.peer_max_message_size = size
            if signal.has(sig.BLOCK_WISE_TRANSFER):
                self.peer_block_wise = True
            self.peer_csm = True
        elif code == sig.PING:
            if signal.has(sig.CUSTODY) and self._waiting_before(self._serial):
                self._custody.append((signal.token, self._serial))
            else:
                self._send(sig.PONG, signal.token, sig.pong_body(signal.has(sig.CUSTODY)))
        elif code == sig.RELEASE:
            self.released_by_peer = True
            if not self._outstanding:
                events.append(self._end("released by the peer", False))
        elif code == sig.ABORT:
            reason = signal.payload.decode("utf-8", "replace") or "no diagnostic"
            events.append(self._end("aborted by the peer: %s" % reason, True))
        # a Pong: the peer is alive, which last_heard says already

    # -- out -------------------------------------------------------------------------

    def send(self, code: int, token: bytes, body: bytes) -> List[Event]:
        """A request or response (``body``: its options and payload) for the peer. The
        first response to a request's token answers that request."""
        if self.ended is not None:
            return []
        self._send(code, token, body)
        if code >= 64:
            serials = self._outstanding.get(token)
            if serials:
                serials.popleft()
                if not serials:
                    del self._outstanding[token]
                if self._custody:
                    self._pongs()
                if self.released_by_peer and not self._outstanding:
                    return [self._end("released by the peer", False)]
        return []

    def _send(self, code: int, token: bytes, body: bytes) -> None:
        self._out.append(self._encode(code, token, body))

    def data_to_send(self) -> List[bytes]:
        """What to write, in order: one item per message (a WebSocket message each)."""
        out, self._out = self._out, []
        return out

    def release(self, reason: str, hold_off: Optional[int] = None) -> List[Event]:
        """End the connection in order (7.04 Release, no Alternative-Address)."""
        if self.ended is not None:
            return []
        self._send(sig.RELEASE, b"", sig.release_body(hold_off))
        return [self._end(reason, False)]

    def abort(self, reason: str, bad_csm_option: Optional[int] = None) -> List[Event]:
        """End the connection on a protocol error (7.05 Abort with ``reason``)."""
        if self.ended is not None:
            return []
        self._send(sig.ABORT, b"", sig.abort_body(reason, bad_csm_option))
        return [self._end(reason, True)]

    def lost(self, reason: str) -> List[Event]:
        """The transport closed under us (nothing more can be sent)."""
        if self.ended is not None:
            return []
        self._out = []
        return [self._end(reason, False)]

    def _end(self, reason: str, error: bool) -> Ended:
        self.ended = Ended(reason, error)
        self._outstanding.clear()
        self._custody = []
        return self.ended

    def _waiting_before(self, serial: int) -> bool:
        """Some request received up to ``serial`` is not answered yet."""
        return any(serials[0] <= serial for serials in self._outstanding.values())

    def _pongs(self) -> None:
        waiting = []
        for token, serial in self._custody:
            if self._waiting_before(serial):
                waiting.append((token, serial))
            else:
                self._send(sig.PONG, token, sig.pong_body(True))
        self._custody = waiting

    # -- time ------------------------------------------------------------------------

    def next_timer(self) -> Optional[float]:
        """When ``handle_timer`` must run next; None once ended."""
        if self.ended is not None:
            return None
        settings = self.settings
        due: List[float] = []
        if not self.peer_csm:
            due.append(self._csm_due)
        if settings.keepalive:
            due.append(max(self.last_heard, self._pinged) + settings.keepalive)
        if settings.idle_timeout:
            due.append(self.last_heard + settings.idle_timeout)
        return min(due) if due else None

    def handle_timer(self, now: float) -> List[Event]:
        if self.ended is not None:
            return []
        settings = self.settings
        if not self.peer_csm and now >= self._csm_due:
            return self.abort("no CSM within %g s" % settings.csm_timeout)
        if settings.idle_timeout and now >= self.last_heard + settings.idle_timeout:
            return self.release("idle for %g s" % settings.idle_timeout)
        if settings.keepalive and now >= max(self.last_heard, self._pinged) + settings.keepalive:
            self._pinged = now
            self._send(sig.PING, b"", b"")
        return []
