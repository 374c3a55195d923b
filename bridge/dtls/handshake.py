"""The DTLS server's handshakes (``server.DtlsServer``'s part): a ClientHello past its
cookie admitted as a session, OpenSSL's handshake driven, the PSK callback, the
session established (its credential, remembered for resumption) or failed.

A mixin of ``DtlsServer``, whose state it uses (``cfg``, ``stats``, ``log``, ``table``,
``guard``, ``admission``, ``resumption``, ``listener``, ``psk_lookup``, ``_now``,
``_serial``, ``_by_peer``, ``_out``, ``_events``) and whose ``_flush`` and ``_end`` it
calls: one class of state, its concerns in three modules (``record_io`` the records of a
session, ``server`` the driver's API and the ending), so that none is past 300 lines.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from OpenSSL import SSL

from ..core.auth import Certificate, PresharedKey
from . import bindings, records
from .context import credential_of
from .events import (FAILED, NONE, PSK, UNKNOWN, X509, DtlsPeer, Event, HandshakeFailed,
                     SessionEstablished)
from .sessions import SWEEP

Address = Tuple[str, int]
FORGOTTEN = "credential forgotten"


class SessionState:
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


class Handshakes:
    """``DtlsServer``'s handshakes (see the module)."""

    cfg: Any
    stats: Dict[str, int]
    log: Any
    _now: float
    _serial: int
    _by_peer: Dict[DtlsPeer, SessionState]
    _out: List[Tuple[bytes, Address]]
    _events: List[Event]
    timer_earlier: bool

    def _psk_key(self, connection: SSL.Connection, raw: bytes) -> Optional[bytes]:
        session = connection.get_app_data()
        now = self._now
        try:
            identity: Optional[str] = raw.decode("utf-8")
        except UnicodeDecodeError:
            identity = None
        if isinstance(session, SessionState):
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
        if isinstance(session, SessionState):
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
        session = SessionState(address, self._serial, connection, hello.random, now)
        connection.set_app_data(session)
        self.table.add(address, session, now)
        if self.cfg.handshake_timeout < SWEEP:  # (its retransmission timer sets it too)
            self.timer_earlier = True
        self._handshake(session, now)

    def _handshake(self, session: SessionState, now: float) -> None:
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
            self._handshake_failed(session, reason, "handshake failed")
            return
        session.timer_due = None  # finished: no retransmission of ours to wait for
        self._flush(session, waits=False)
        self._established(session, now)

    def _established(self, session: SessionState, now: float) -> None:
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
        if self.cfg.idle_timeout < SWEEP:  # else after the timer armed (at most SWEEP)
            self.timer_earlier = True
        peer = session.peer = DtlsPeer(session.address, session.serial, credential,
                                       session.key)
        self._by_peer[peer] = session
        method = PSK if type(credential) is PresharedKey else (
            X509 if type(credential) is Certificate else NONE)
        # a SessionEstablished, built as the tuple it is (no NamedTuple __new__ frame)
        self._events.append(tuple.__new__(SessionEstablished, (
            peer, credential, found is not None, cipher, method, now - session.started)))

    def _handshake_failed(self, session: SessionState, reason: str, ended: str) -> None:
        """A handshake OpenSSL cannot go on with: said at debug, its event, the session
        ended for ``ended`` (nothing to tell the peer)."""
        self.log.debug("DTLS handshake with {peer} failed: {reason}", peer=str(session),
                       reason=reason)
        self._failed(session, FAILED, reason)
        self._end(session, ended, notify=False)

    def _failed(self, session: SessionState, outcome: str, reason: str) -> None:
        method = session.method
        if method == UNKNOWN and session.connection is not None and (
                session.verify_error is not None
                or session.connection.get_peer_certificate() is not None):
            method = X509
        self._events.append(HandshakeFailed(session.address, outcome, reason, method,
                                            self._now - session.started))
