"""A DTLS 1.2 server without I/O: ciphertext datagrams in, plaintext events out.

The shape is aioquic's: the driver hands it each datagram with its source and ``now``
(``receive_datagram``), writes what ``datagrams_to_send`` returns, takes the events
it returns, or those ``handle_timer`` returns or ``events`` (after ``send``, ``close``,
``end_sessions``...) gives (``bridge.dtls.events``: ``SessionEstablished``, ``Plaintext``,
``SessionEnded``, ``HandshakeFailed``), keeps one timer at ``get_timer()`` that calls
``handle_timer(now)``, and sends with ``send(peer, plaintext, now)``. A session is a
``DtlsPeer`` value, not an object that sends. pyOpenSSL's memory BIOs do no I/O, so
everything that drives OpenSSL is here (each datagram's calls through ``bindings``,
pyOpenSSL owning the context and the connections); the clock (every ``now``), the randomness of the
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

from ..core.auth import Certificate, PresharedKey
from . import bindings, psk, records
from .context import build_context, credential_of, note_verify_error
from .cookies import CookieJar
from .events import (FAILED, NONE, PSK, TIMED_OUT, UNKNOWN, X509, DtlsPeer, Event,
                     HandshakeFailed, Plaintext, SessionEnded, SessionEstablished)
from .admission import Admission
from .listener import Listener
from .resumption import Resumption
from .sessions import HandshakeGuard, SessionTable

Address = Tuple[str, int]
PskLookup = Callable[[str], Optional[bytes]]  # identity -> key, from memory
MAX_PLAINTEXT = 16384  # a DTLS 1.2 record's plaintext at most (RFC 6347 §4.1: 2^14)
_NO_EVENTS: Sequence[Event] = ()  # returned when there are none
_AFTER_FINISHED = (records.ALERT, records.APPLICATION_DATA)
SWEEP = 10.0  # s between sweeps of the guard's buckets and negative cache

FORGOTTEN = "credential forgotten"
# sessions ended for these reasons must not be resumed (cryptography exposes no
# SSL_CTX_remove_session; OpenSSL drops a session freed without a shutdown sent)
UNRESUMABLE = ("credential removed", "key changed", FORGOTTEN)

STATS = ("hello_verify_sent", "handshakes_full", "handshakes_resumed", "handshakes_failed",
         "handshake_timeouts", "refused_full", "refused_rate", "refused_address",
         "handshakes_evicted", "dropped", "alerts", "unknown_psk_identity", "idle_ended",
         "ended_by_registry", "replaced", "records_in", "records_out")


class _Session:
    """The server's own state of one session (never handed out: its ``peer`` is)."""

    __slots__ = ("key", "address", "serial", "connection", "established", "client_random",
                 "psk_identity", "psk_key", "method", "timer_due", "closed",
                 "verify_error", "shortest", "peer", "started")

    def __init__(self, address: Address, serial: int, connection: SSL.Connection,
                 client_random: bytes, started: float):
        self.key = "dtls %s %d %d" % (address[0], address[1], serial)
        self.address = address
        self.serial = serial
        self.connection: Optional[SSL.Connection] = connection
        self.established = False
        self.client_random = client_random
        self.psk_identity: Optional[str] = None
        self.psk_key: Optional[bytes] = None
        self.method = UNKNOWN  # PSK once the PSK callback ran
        self.timer_due: Optional[float] = None
        self.closed = False
        self.verify_error: Optional[str] = None  # why its certificate failed, if it did
        self.shortest = 0  # bytes: no protected record of its cipher is shorter
        self.peer: Optional[DtlsPeer] = None  # once established
        self.started = started  # when its cookie verified

    def __str__(self) -> str:
        host, port = self.address
        return ("dtls:[%s]:%d" if ":" in host else "dtls:%s:%d") % (host, port)


class DtlsServer:
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
        self.listener.start(self.context)  # after: SSL_new copies the PSK callback
        self._now = now
        self._serial = 0
        self._by_peer: Dict[DtlsPeer, _Session] = {}
        self._out: List[Tuple[bytes, Address]] = []
        self._events: List[Event] = []
        # OpenSSL retransmissions: a heap of (due, key, session), stale entries (a closed
        # session, or one whose timer_due moved) left in place and skipped when on top
        self._timers: List[Tuple[float, str, _Session]] = []

    # -- the driver's API --------------------------------------------------------------

    def receive_datagram(self, data: bytes, address: Address, now: float) -> Sequence[Event]:
        """One datagram from ``address`` (a (host, port) pair). Returns the events since
        the last call of this, ``handle_timer`` or ``events`` (saving the driver a call
        per datagram)."""
        self._now = now
        self.stats["records_in"] += 1
        bindings.clear_errors()  # no other connection's error may pass for this one's
        session = self.table.get(address)
        if session is not None and session.established and data[3:5] == records.SESSION_EPOCH:
            # the common case: a record of its session (``protected`` keeps whole records
            # of its epoch only; a ClientHello is epoch 0)
            self._feed(session, data, now)
            events = self._events
            if events:
                self._events = []
                return events
            return _NO_EVENTS
        data = records.whole(data)  # OpenSSL gets whole records only (see records.whole)
        if not data:
            self.stats["dropped"] += 1
        else:
            hello = records.client_hello(data)
            if session is not None and (hello is None
                                        or hello.random == session.client_random):
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

    # -- handshakes --------------------------------------------------------------------

    def _psk_key(self, connection: SSL.Connection, raw: bytes) -> Optional[bytes]:
        session = connection.get_app_data()
        now = self._now
        try:
            identity: Optional[str] = raw.decode("utf-8")
        except UnicodeDecodeError:
            identity = None
        if isinstance(session, _Session):
            session.method = PSK
        key = None
        if identity is not None and not self.guard.known_unknown(identity, now):
            key = self.psk_lookup(identity)
            if key is None:
                self.guard.unknown(identity, now)
        if key is None:
            self.stats["unknown_psk_identity"] += 1
            self.log.debug("Unknown PSK identity from {peer}", peer=str(session))
            return None
        if isinstance(session, _Session):
            session.psk_identity = identity
            session.psk_key = key
        return key

    def _hello(self, data: bytes, address: Address, hello: records.ClientHello,
               now: float) -> None:
        connection, reply, error = self.listener.listen(data, address, hello, now)
        if connection is None:
            if reply:
                self.stats["hello_verify_sent"] += 1
                self._out.append((reply, address))
            elif error:
                self.stats["dropped"] += 1
                self.log.debug("Unreadable ClientHello from {peer}: {reason}",
                               peer="%s:%d" % address, reason=error)
            return
        ending = self.admission.admit(address, now)
        if ending is None:
            return
        for old, reason in ending:
            self._end(old, reason, notify=False)
        self._serial += 1
        session = _Session(address, self._serial, connection, hello.random, now)
        connection.set_app_data(session)
        self.table.add(address, session, now)
        self._handshake(session, now)

    def _handshake(self, session: _Session, now: float) -> None:
        connection = session.connection
        assert connection is not None
        result = bindings.handshake(connection)
        if result == bindings.WANT:
            self._flush(session)
            return
        if result == bindings.FAILED:
            reason = bindings.reason()
            self._flush(session)  # the alert, if OpenSSL sends one
            self.stats["handshakes_failed"] += 1
            if session.verify_error is not None:
                reason = "%s: %s" % (reason, session.verify_error)
            self.log.debug("DTLS handshake with {peer} failed: {reason}", peer=str(session),
                           reason=reason)
            self._failed(session, FAILED, reason)
            self._end(session, "handshake failed", notify=False)
            return
        self._flush(session)
        self._established(session, now)

    def _established(self, session: _Session, now: float) -> None:
        connection = session.connection
        assert connection is not None
        # only a resumption shares a master secret
        secret, found = self.resumption.recall(bindings.master_key(connection))
        session.established = True  # (for its close_notify, whatever follows)
        if found is not None:
            credential, session.psk_key = found
        elif bindings.session_reused(connection):
            # resumed, but its credential was forgotten (removed or changed, or evicted):
            # end it and drop it from OpenSSL's cache, so the client's next try is a full
            # handshake that asks the registry again (not an anonymous session)
            self.log.info("DTLS session with {peer} resumed a session whose credential is "
                          "gone: ended", peer=str(session))
            self._end(session, FORGOTTEN)
            return
        else:
            credential = credential_of(connection, session.psk_identity)
            self.resumption.remember(secret, credential, session.psk_key)
        if self.table.full():  # handshakes that began while there was room
            self.stats["refused_full"] += 1
            self._end(session, "refused: dtls.max_sessions")
            return
        self.stats["handshakes_resumed" if found is not None else "handshakes_full"] += 1
        cipher = bindings.cipher_name(connection)
        session.shortest = records.min_body(cipher)
        self.table.establish(session, now)
        peer = session.peer = DtlsPeer(session.address, session.serial, credential,
                                       session.key)
        self._by_peer[peer] = session
        method = PSK if type(credential) is PresharedKey else (
            X509 if type(credential) is Certificate else NONE)
        self._events.append(SessionEstablished(peer, credential, found is not None, cipher,
                                               method, now - session.started))

    def _failed(self, session: _Session, outcome: str, reason: str) -> None:
        method = session.method
        if method == UNKNOWN and session.connection is not None and (
                session.verify_error is not None
                or session.connection.get_peer_certificate() is not None):
            method = X509
        self._events.append(HandshakeFailed(session.address, outcome, reason, method,
                                            self._now - session.started))

    # -- records -----------------------------------------------------------------------

    def _feed(self, session: _Session, data: bytes, now: float) -> None:
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

    def _read(self, session: _Session, records_in: int, largest: int) -> None:
        """Up to ``records_in`` reads (0: until OpenSSL has nothing), each of one whole
        record of at most ``largest`` bytes."""
        connection = session.connection
        assert connection is not None
        size = largest if 0 < largest < MAX_PLAINTEXT else MAX_PLAINTEXT
        events, peer, recv = self._events, session.peer, bindings.read
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
            events.append(Plaintext(peer, data))  # type: ignore[arg-type]
            read += 1
            if read == records_in:
                break
        self._flush(session)

    def _flush(self, session: _Session) -> None:
        connection = session.connection
        if connection is None:
            return
        flight = bindings.drain(connection)
        if flight:
            address, out = session.address, self._out
            datagrams = records.datagrams(flight, self.cfg.mtu)
            for datagram in datagrams:
                out.append((datagram, address))
            self.stats["records_out"] += len(datagrams)
        if session.established:
            return
        left = bindings.timeout(connection)  # OpenSSL's retransmission time
        if left is None:
            session.timer_due = None
            return
        due = self._now + left
        if session.timer_due is None or due < session.timer_due:
            session.timer_due = due
            heapq.heappush(self._timers, (due, session.key, session))

    def _retransmit(self, session: _Session, now: float) -> None:
        session.timer_due = None
        connection = session.connection
        if connection is None:
            return
        bindings.clear_errors()
        if not bindings.handle_timeout(connection):
            reason = bindings.reason()
            self.log.debug("DTLS handshake with {peer} failed: {reason}", peer=str(session),
                           reason=reason)
            self._failed(session, FAILED, reason)
            self._end(session, "retransmission failed", notify=False)
            return
        self._flush(session)

    # -- ending ------------------------------------------------------------------------

    def _used(self, session: _Session) -> bool:
        return self.in_use is not None and session.peer is not None \
            and self.in_use(session.peer)

    def _end(self, session: _Session, reason: str, notify: bool = True) -> None:
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
