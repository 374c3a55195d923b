"""The records of a DTLS session (``server.DtlsServer``'s part): a datagram's records fed
to OpenSSL (only protected ones once established), each record read as one whole
``Plaintext``, the flights drained into datagrams of at most the MTU, and OpenSSL's
retransmission timers.

A mixin of ``DtlsServer`` (see ``handshake``), using its ``cfg``, ``stats``, ``log``,
``table``, ``_now``, ``_out``, ``_events``, ``_timers`` and calling its ``_handshake``,
``_handshake_failed`` and ``_end``.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Tuple

from . import bindings, records
from .events import Event, Plaintext
from .handshake import Address, SessionState

_tuple = tuple.__new__
MAX_PLAINTEXT = 16384  # a DTLS 1.2 record's plaintext at most (RFC 6347 §4.1: 2^14)
_AFTER_FINISHED = (records.ALERT, records.APPLICATION_DATA)


class RecordIO:
    """``DtlsServer``'s records (see the module)."""

    cfg: Any
    stats: Dict[str, int]
    log: Any
    _now: float
    _out: List[Tuple[bytes, Address]]
    _events: List[Event]
    _timers: List[Tuple[float, str, SessionState]]
    timer_earlier: bool

    def _feed(self, session: SessionState, data: bytes, now: float) -> None:
        connection = session.connection
        assert connection is not None
        if session.established:
            # no unauthenticated record reaches it
            kept, count, largest = records.protected(data, session.shortest)
            if not count:
                self.stats["dropped"] += 1
                return
            if not bindings.feed(connection, kept):
                self.stats["dropped"] += 1
                return
            self.table.touch(session, now)
            self._read(session, count, largest)
            return
        if not bindings.feed(connection, data):
            self.stats["dropped"] += 1
            return
        self._handshake(session, now)
        if session.established and not session.closed:
            self.table.touch(session, now)
            # records after its Finished in this datagram (a resuming client may send
            # them at once), or held by OpenSSL since before it finished (SSL_pending
            # counts those); usually neither, and a read would only say WantRead
            if records.last_type(data) in _AFTER_FINISHED or bindings.pending(connection):
                self._read(session, 0, MAX_PLAINTEXT)

    def _read(self, session: SessionState, records_in: int, largest: int) -> None:
        """Up to ``records_in`` reads (0: until OpenSSL has nothing), each of one whole
        record of at most ``largest`` bytes."""
        connection = session.connection
        assert connection is not None
        size = largest if 0 < largest < MAX_PLAINTEXT else MAX_PLAINTEXT
        events, peer, recv = self._events, session.peer, bindings.read
        append = events.append
        read = 0
        while True:
            data = recv(connection, size)
            if type(data) is not bytes:
                if data == bindings.WANT:
                    break
                if data == bindings.CLOSED:  # close_notify
                    self._flush(session)
                    self.log.debug("DTLS session with {peer} closed by the peer",
                                   peer=str(session))
                    self._end(session, "closed by peer", notify=False)
                    return
                self.stats["alerts"] += 1
                self.log.debug("DTLS session with {peer} ended: {reason}", peer=str(session),
                               reason=bindings.reason())
                self._end(session, "error", notify=False)
                return
            # a Plaintext, built as the tuple it is (its NamedTuple __new__ is a frame)
            append(_tuple(Plaintext, (peer, data)))
            read += 1
            if read == records_in:
                break
        self._flush(session)

    def _flush(self, session: SessionState, waits: bool = True) -> None:
        """What OpenSSL wrote, to the datagrams to send; and while the handshake goes on
        (``waits``: it did not just finish), OpenSSL's retransmission time to the
        timers."""
        connection = session.connection
        if connection is None:
            return
        flight = bindings.drain(connection)
        if flight:
            if len(flight) <= self.cfg.mtu:  # one datagram (records.datagrams, inline)
                self._out.append((flight, session.address))
                self.stats["records_out"] += 1
            else:
                address, out = session.address, self._out
                datagrams = records.datagrams(flight, self.cfg.mtu)
                for datagram in datagrams:
                    out.append((datagram, address))
                self.stats["records_out"] += len(datagrams)
        if session.established or not waits:
            return
        left = bindings.timeout(connection)  # OpenSSL's retransmission time
        if left is None:
            session.timer_due = None
            return
        due = self._now + left
        if session.timer_due is None or due < session.timer_due:
            session.timer_due = due
            heapq.heappush(self._timers, (due, session.key, session))
            self.timer_earlier = True

    def _retransmit(self, session: SessionState, now: float) -> None:
        session.timer_due = None
        connection = session.connection
        if connection is None:
            return
        bindings.clear_errors()
        if not bindings.handle_timeout(connection):
            self._handshake_failed(session, bindings.reason(), "retransmission failed")
            return
        self._flush(session)
