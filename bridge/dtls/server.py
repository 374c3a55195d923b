"""A DTLS 1.2 server without I/O: ciphertext datagrams in, plaintext events out.

The shape is aioquic's: the driver hands it each datagram with its source and ``now``
(``receive_datagram``), writes what ``datagrams_to_send`` returns, takes the events
it returns, or those ``handle_timer`` returns or ``events`` (after ``send``, ``close``,
``end_sessions``...) gives (``bridge.dtls.events``: ``SessionEstablished``, ``Plaintext``,
``SessionEnded``, ``HandshakeFailed``), keeps one timer at ``get_timer()`` that calls
``handle_timer(now)`` (asking again after a datagram only when ``timer_earlier`` says a
due time may have come before the one it gave: a timer armed early does no harm, it
only asks again), and sends with ``send(peer, plaintext, now)``. A session is a
``DtlsPeer`` value, not an object that sends. pyOpenSSL's memory BIOs do no I/O, so
everything that drives OpenSSL is in this package (each datagram's calls through
``bindings``, pyOpenSSL owning the context and the connections): this module the
driver's API, the timers and the ending, ``handshake`` the handshakes, ``record_io`` a
session's records; the clock (every ``now``), the randomness of the
cookie secrets, the PSK key lookup (from memory: OpenSSL asks synchronously,
openssl/openssl#19358), the "session in use" predicate and the logger are injected.
Nothing here knows of CoAP, sockets or Twisted: the same core can serve TLS over a
stream (RFC 8323's coaps+tcp) with a stream driver in place of the datagram one.
Facts and pitfalls followed are in ../shared/spec/dtls-notes.md (P1...).

* The cookie phase is ``listener.Listener``: no state for an address before its
  cookie verifies (the HelloVerifyRequest is built without OpenSSL); then, if ``admission.Admission`` lets it start (the bounds of
  ``sessions.SessionTable`` on established sessions and on half-open handshakes in
  all and per address, the handshake rate of ``sessions.HandshakeGuard``), the
  listener's connection becomes the session's.
* A ClientHello on an address that has a session (a rebooted device, RFC 6347
  §4.2.8) replaces it only once its cookie verifies, and a late copy of the session's
  own ClientHello (same client random) is ignored (P5).
* Flights are split on record headers into datagrams of at most ``mtu`` (P2); the
  ``Connection`` is told the MTU too, so it fragments handshake messages to fit.
* One record is one ``Plaintext``, whole: OpenSSL returns one DTLS record per
  ``SSL_read``, so each read asks for as much as the longest record of the datagram
  (pyOpenSSL allocates the size asked on every call, P-note on buffers), and there are
  no more reads than records.
* Timers: OpenSSL's retransmission times (a heap), the handshake deadline (a wrong PSK
  fails silently, P6) and the idle timeout (``sessions``). Only records from the peer
  keep a session alive (a send proves nothing about the peer); a session the injected
  ``in_use`` predicate names (for CoAP: one with live observe relations, which end when
  a CON notification goes unacknowledged) outlives ``idle_timeout``.
* The credential: the PSK identity seen by the PSK callback (``psk``), or the verified
  client certificate, or None; remembered for resumption under a hash of the master
  secret (``resumption``, P4). Only the server-side session cache is used (P3).
* Hostile input (garbage, alerts, a ClientHello flood) is counted in ``stats`` and
  logged at debug or info level, never as an error and never with a traceback.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from OpenSSL import SSL

from ..core.auth import PresharedKey
from . import bindings, psk, records
from .context import build_context, note_verify_error
from .cookies import CookieJar
from .events import TIMED_OUT, DtlsPeer, Event, SessionEnded
from .admission import Admission
from .listener import Listener
from .handshake import FORGOTTEN, Address, Handshakes, SessionState
from .record_io import RecordIO
from .resumption import Resumption
from .sessions import SWEEP, HandshakeGuard, SessionTable

PskLookup = Callable[[str], Optional[bytes]]  # identity -> key, from memory
_NO_EVENTS: Sequence[Event] = ()  # returned when there are none
_HANDSHAKE = bytes([records.HANDSHAKE])  # a record's first byte, as a slice

# sessions ended for these reasons must not be resumed (cryptography exposes no
# SSL_CTX_remove_session; OpenSSL drops a session freed without a shutdown sent)
UNRESUMABLE = ("credential removed", "key changed", FORGOTTEN)

STATS = ("hello_verify_sent", "handshakes_full", "handshakes_resumed", "handshakes_failed",
         "handshake_timeouts", "refused_full", "refused_rate", "refused_address",
         "handshakes_evicted", "dropped", "alerts", "unknown_psk_identity", "idle_ended",
         "ended_by_registry", "replaced", "records_in", "records_out")


class DtlsServer(Handshakes, RecordIO):
    """The sessions of one DTLS port (see the module)."""

    def __init__(self, cfg: Any, psk_lookup: PskLookup, random_bytes: Callable[[int], bytes],
                 now: float, log: Any, in_use: Optional[Callable[[DtlsPeer], bool]] = None,
                 private_key: Any = None):
        self.cfg = cfg
        self.psk_lookup = psk_lookup
        self.log = log  # a twisted.logger-like Logger (debug, info, failure)
        self.in_use = in_use
        self.table = SessionTable(cfg.max_sessions, cfg.handshake_timeout, cfg.idle_timeout,
                                  cfg.max_handshakes, cfg.max_handshakes_per_address)
        self.guard = HandshakeGuard(cfg.handshake_rate, cfg.handshake_burst)
        self.stats: Dict[str, int] = {name: 0 for name in STATS}
        self.admission = Admission(self.table, self.guard, self.stats, log)
        self.resumption = Resumption()
        bindings.require()  # at start: every OpenSSL function the datagrams need
        self.listener = Listener(CookieJar(random_bytes, now), cfg.mtu)
        self.context = build_context(cfg, private_key)
        self._cookies = bindings.CookieCallbacks(self.context, self.listener.cookie_generate,
                                                 self.listener.cookie_verify, log)
        self._verify = bindings.VerifyCallback(self.context, note_verify_error, log) \
            if cfg.ca_file else None
        self._psk = psk.PskServer(self.context, self._psk_key, log,
                                  cfg.psk_identity_hint.encode("utf-8")) if cfg.psk else None
        self.listener.start(self.context, self._cookies)  # after: SSL_new copies the PSK callback
        self._now = now
        self._serial = 0
        self._by_peer: Dict[DtlsPeer, SessionState] = {}
        self._by_address = self.table.by_address
        self._out: List[Tuple[bytes, Address]] = []
        self._events: List[Event] = []
        # OpenSSL retransmissions: a heap of (due, key, session), stale entries (a closed
        # session, or one whose timer_due moved) left in place and skipped when on top
        self._timers: List[Tuple[float, str, SessionState]] = []
        # set where a due time is added (a retransmission, a handshake's deadline, an
        # idle one), cleared by ``get_timer``: due times only ever move later otherwise
        self.timer_earlier = True

    # -- the driver's API --------------------------------------------------------------

    def receive_datagram(self, data: bytes, address: Address, now: float) -> Sequence[Event]:
        """One datagram from ``address`` (a (host, port) pair). Returns the events since
        the last call of this, ``handle_timer`` or ``events`` (saving the driver a call
        per datagram)."""
        self._now = now
        self.stats["records_in"] += 1
        if bindings.queued():  # no other connection's error may pass for this one's
            bindings.clear_errors()
        session = self._by_address.get(address)  # the table's (one dict look-up)
        if session is not None and session.established and data[3:5] == records.SESSION_EPOCH:
            # the common case: a record of its session (``protected`` keeps whole records
            # of its epoch only; a ClientHello is epoch 0)
            self._feed(session, data, now)
            events = self._events
            if events:
                self._events = []
                return events
            return _NO_EVENTS
        # a ClientHello is read first (a datagram of a handshake after it starts with a
        # ChangeCipherSpec or a ClientKeyExchange): one alone in its datagram, as
        # clients send it, is whole already
        hello = records.client_hello(data) if data[:1] == _HANDSHAKE else None
        if hello is None or not hello.alone:
            data = records.whole(data)  # OpenSSL gets whole records only (records.whole)
        if not data:
            self.stats["dropped"] += 1
        elif session is not None and (hello is None or hello.random == session.client_random):
            self._feed(session, data, now)  # its own records, or its ClientHello again
        elif hello is None:
            self.stats["dropped"] += 1  # no session, not a ClientHello: nothing is sent
        else:
            self._hello(data, address, hello, now)
        events = self._events
        if events:
            self._events = []
            return events
        return _NO_EVENTS

    def _take_events(self) -> Sequence[Event]:
        events = self._events
        if not events:
            return _NO_EVENTS
        self._events = []
        return events

    def datagrams_to_send(self) -> List[Tuple[bytes, Address]]:
        """Ciphertext for the socket since the last call: (datagram, address) in order."""
        out, self._out = self._out, []
        return out

    def events(self) -> Sequence[Event]:
        """The events since the last call (of this, ``receive_datagram`` or
        ``handle_timer``), in order (``bridge.dtls.events``)."""
        return self._take_events()

    def send(self, peer: DtlsPeer, data: bytes, now: float) -> None:
        """``data`` to ``peer`` as one record (dropped once its session is over)."""
        self._now = now
        session = self._by_peer.get(peer)
        if session is None or session.connection is None:
            return
        if bindings.queued():
            bindings.clear_errors()
        if not bindings.write(session.connection, data):
            self.log.info("Cannot send to {peer}: {reason}", peer=str(peer),
                          reason=bindings.reason())
            return
        self._flush(session)

    def close(self, peer: DtlsPeer, reason: str = "closed") -> None:
        """End ``peer``'s session with a close_notify."""
        session = self._by_peer.get(peer)
        if session is not None:
            self._end(session, reason)

    def close_all(self, notify: bool = True) -> None:
        """End every session (the port is closing), with close_notify if ``notify``."""
        for session in self.table.sessions():
            self._end(session, "stopping", notify)

    def get_timer(self) -> float:
        """When ``handle_timer`` is due next."""
        self.timer_earlier = False
        due = self._now + SWEEP
        timers = self._timers
        while timers and (timers[0][2].closed or timers[0][2].timer_due != timers[0][0]):
            heapq.heappop(timers)
        if timers and timers[0][0] < due:
            due = timers[0][0]
        table_due = self.table.next_due()
        if table_due is not None and table_due < due:
            due = table_due
        return due

    def handle_timer(self, now: float) -> Sequence[Event]:
        """What is due at ``now``; returns the events since the last call (as
        ``receive_datagram``)."""
        self._now = now
        timers, fired = self._timers, []
        while timers and timers[0][0] <= now:
            fired.append(heapq.heappop(timers))
        for due, _, session in fired:
            if not session.closed and session.timer_due == due:
                self._retransmit(session, now)
        for session, reason in self.table.due(now, self._used):
            if reason == "idle":
                self.stats["idle_ended"] += 1
                self.log.debug("DTLS session with {peer} idle: ended", peer=str(session))
                self._end(session, reason)
            else:
                self.stats["handshake_timeouts"] += 1
                self.log.debug("DTLS handshake with {peer} not finished within {timeout} s "
                               "(a wrong PSK fails this way)", peer=str(session),
                               timeout=self.cfg.handshake_timeout)
                self._failed(session, TIMED_OUT, "not finished in time")
                self._end(session, reason, notify=False)
        self.guard.sweep(now)
        return self._take_events()

    # -- the registry changed ----------------------------------------------------------

    def end_sessions(self, predicate: Callable[[Any], bool]) -> int:
        """End (close_notify) the sessions whose credential ``predicate`` accepts (sessions
        without a client credential are not asked); forget them for resumption too."""
        ended = 0
        for session in self.table.sessions():
            peer = session.peer
            if peer is not None and peer.credential is not None and predicate(peer.credential):
                self._end(session, "credential removed")
                ended += 1
        self.resumption.forget(lambda cred, key: cred is not None and predicate(cred))
        self.stats["ended_by_registry"] += ended
        self.guard.forget()
        return ended

    def end_changed_keys(self, psk_lookup: PskLookup) -> int:
        """End the PSK sessions whose identity now has another key (and forget those for
        resumption)."""
        ended = 0
        for session in self.table.sessions():
            peer = session.peer
            if peer is not None and isinstance(peer.credential, PresharedKey) \
                    and session.psk_key is not None:
                key = psk_lookup(peer.credential.identity)
                if key is not None and key != session.psk_key:
                    self._end(session, "key changed")
                    ended += 1
        self.resumption.forget(lambda cred, key: isinstance(cred, PresharedKey)
                               and key is not None
                               and psk_lookup(cred.identity) not in (None, key))
        self.stats["ended_by_registry"] += ended
        return ended

    @property
    def sessions_established(self) -> int:
        return self.table.established

    @property
    def sessions_handshaking(self) -> int:
        return self.table.handshaking

    # -- ending ------------------------------------------------------------------------

    def _used(self, session: SessionState) -> bool:
        return self.in_use is not None and session.peer is not None \
            and self.in_use(session.peer)

    def _end(self, session: SessionState, reason: str, notify: bool = True) -> None:
        if session.closed:
            return
        session.closed = True
        connection = session.connection
        if notify and connection is not None and session.established:
            bindings.clear_errors()
            # close_notify; a failure means the session is broken already: nothing to
            # tell the peer
            bindings.shutdown(connection)
            self._flush(session)
            if reason in UNRESUMABLE:
                # freed without SENT_SHUTDOWN, OpenSSL removes it from its session cache
                connection.set_shutdown(connection.get_shutdown() & ~SSL.SENT_SHUTDOWN)
        elif connection is not None and session.established and reason != "error":
            # quietly, yet resumable: OpenSSL removes a session freed without a shutdown
            # from its cache (a replaced one, one the peer closed, one ended at exit)
            connection.set_shutdown(connection.get_shutdown() | SSL.SENT_SHUTDOWN)
        self.table.remove(session)
        session.connection = None
        if connection is not None:
            connection.set_app_data(None)
        peer = session.peer
        if peer is not None:
            del self._by_peer[peer]
            self._events.append(SessionEnded(peer, reason))
