"""CoAP over DTLS 1.2 (CoAPs, port 5684): pyOpenSSL sessions over memory BIOs on a UDP port.

Each DTLS session is one pyOpenSSL ``Connection`` with memory BIOs; ``DtlsTransport``
moves ciphertext between them and a Twisted UDP port, and the plaintext datagrams
into the same sans-IO CoAP endpoint the plain UDP port feeds (``BridgeCoap.received``),
with the ``DtlsSession`` as the peer: what the endpoint sends to it goes back
encrypted through it (``DtlsSession.send``). Facts and pitfalls this follows are in
../shared/spec/dtls-notes.md (numbered P1...).

* No state for an unverified address: a datagram from an address without a session
  must be a ClientHello; it goes to one shared listener ``Connection`` running
  ``DTLSv1_listen``, which answers with a HelloVerifyRequest (a 16-byte stateless
  cookie, ``bridge.dtls.cookies``) and nothing bigger. Only a ClientHello with a
  valid cookie creates a session (the listener becomes it; a new listener is made),
  and only within ``max_sessions`` and the per-address handshake rate.
* A ClientHello on an address that has a session (a rebooted device, RFC 6347
  §4.2.8) replaces it only once its cookie verifies, and a late copy of the
  session's own ClientHello (same client random) is ignored (P5).
* Flights are split on record headers into datagrams of at most ``mtu`` (P2); the
  ``Connection`` is told the MTU too, so it fragments handshake messages to fit.
* One timer for every session: OpenSSL's retransmission times
  (``DTLSv1_get_timeout``/``DTLSv1_handle_timeout``), the handshake deadline (a
  wrong PSK fails silently, P6) and the idle timeout (``bridge.dtls.sessions``).
* The credential: a PSK identity seen by the PSK callback (``edge.psk``), or the
  verified client certificate as ``Certificate(certificate_id(leaf DER))``, or None
  (no client credential: token-in-path). OpenSSL neither re-runs the PSK callback
  nor keeps the chain on resumption (P4), so the credential is remembered under a
  hash of the session's master secret at the full handshake, which a resumed
  handshake shares (and a full one never does). Only the server-side session cache
  is used, no tickets (P3).
* Hostile input (garbage, alerts, a ClientHello flood) is counted in ``stats`` and
  logged at debug or info level, never as an error and never with a traceback.

Not here: DTLS Connection ID (RFC 9146; no OpenSSL release has it, P10). With it, a
record would be mapped to its session by the CID in its header instead of by source
address in ``datagramReceived``, and the session's ``address`` updated on a valid
record from a new one; docs/device-api.md says what that would change.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

from ..settings import DtlsConfig
from ..core.auth import Certificate, PresharedKey, certificate_id
from ..dtls import records
from ..dtls.cookies import CookieJar
from ..dtls.failures import FAILED, TIMED_OUT, HandshakeFailures
from ..dtls.sessions import HandshakeGuard, SessionTable
from ..logs import logger
from ..registry import mask
from . import psk as psk_edge
from .dtls_keys import KeyProblem, load_key, use_key
from . import udp

log = logger("dtls")

READ = 4096  # bytes per bio_read/recv: pyOpenSSL allocates this much on every call
RECEIVE_BUFFER = 65535
DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION; pyOpenSSL names only the TLS ones
SESSION_ID_CONTEXT = b"coapbridge"
SESSION_LIFETIME = 86400  # s a session may be resumed
MAX_REMEMBERED = 20480  # credentials of resumable sessions (OpenSSL's cache size)

FORGOTTEN = "credential forgotten"
# sessions ended for these reasons must not be resumed (cryptography exposes no
# SSL_CTX_remove_session; OpenSSL drops a session freed without a shutdown sent)
UNRESUMABLE = ("credential removed", "key changed", FORGOTTEN)

PskLookup = Callable[[str], Optional[bytes]]  # identity -> key, from memory
Address = Tuple[str, int]

STATS = ("hello_verify_sent", "handshakes_full", "handshakes_resumed", "handshakes_failed",
         "handshake_timeouts", "refused_full", "refused_rate", "dropped", "alerts",
         "unknown_psk_identity", "idle_ended", "ended_by_registry", "replaced",
         "records_in", "records_out")


def _note_verify_error(connection: SSL.Connection, cert: Any, error: int, depth: int,
                       ok: int) -> bool:
    """OpenSSL's verdict on one certificate of a client chain, unchanged; a failure is
    noted on the session for the log line (OpenSSL itself only says "verify failed")."""
    if not ok:
        session = connection.get_app_data()
        if isinstance(session, DtlsSession) and session.verify_error is None:
            text = psk_edge.ffi.string(psk_edge.lib.X509_verify_cert_error_string(error))
            session.verify_error = "%s (depth %d)" % (text.decode("ascii", "replace"), depth)
    return bool(ok)


def load_identity(ctx: SSL.Context, cfg: DtlsConfig) -> None:
    """The bridge's certificate and key, the device CA, and the server-side session cache
    on a DTLS or TLS context (``edge.tls`` shares it)."""
    if cfg.cert_file:
        ctx.use_certificate_chain_file(cfg.cert_file)
        use_key(ctx, load_key(cfg))
        ctx.check_privatekey()
    if cfg.ca_file:
        ctx.load_verify_locations(cfg.ca_file)
        # WANTED, as ThingsBoard: asked for, not required (token devices use DTLS too);
        # a chain that is presented is verified by OpenSSL
        ctx.set_verify(SSL.VERIFY_PEER, _note_verify_error)
        ctx.set_verify_depth(8)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_timeout(SESSION_LIFETIME)


def build_context(cfg: DtlsConfig, cookie_generate: Callable[[SSL.Connection], bytes],
                  cookie_verify: Callable[[SSL.Connection, bytes], bool]) -> SSL.Context:
    """The server context (raises ``SSL.Error`` or ``OSError`` on a bad file)."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_COOKIE_EXCHANGE | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_NO_TICKET)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    load_identity(ctx, cfg)
    ctx.set_cookie_generate_callback(cookie_generate)
    ctx.set_cookie_verify_callback(cookie_verify)
    # last: pyOpenSSL before 26 checks the list on a throw-away Connection, after which
    # it warns about (and will refuse) any change to the context
    ctx.set_cipher_list(cfg.ciphers.encode("ascii"))
    return ctx


def _openssl_reason(exc: Exception) -> str:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(entry[-1]) for entry in args[0])
    return str(exc) or type(exc).__name__


def check_config(cfg: DtlsConfig) -> List[str]:
    """Problems with the DTLS files, one line each, for ``bridge.startup_checks``."""
    problems = []
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(cfg, key)
        if path and not os.access(path, os.R_OK):
            problems.append("dtls.%s: cannot read %s" % (key, path))
    if problems:
        return problems
    steps = []
    key_file = cfg.key_file or cfg.cert_file  # empty: the key is in the certificate's file
    if cfg.cert_file:
        try:
            private_key = load_key(cfg)
        except KeyProblem as exc:
            return ["dtls.key_file: %s" % exc]
        steps += [("cert_file", lambda ctx: ctx.use_certificate_chain_file(cfg.cert_file)),
                  ("key_file", lambda ctx: use_key(ctx, private_key)),
                  ("key_file", lambda ctx: ctx.check_privatekey())]
    if cfg.ca_file:
        steps.append(("ca_file", lambda ctx: ctx.load_verify_locations(cfg.ca_file)))
    # last, as in build_context
    steps.append(("ciphers", lambda ctx: ctx.set_cipher_list(cfg.ciphers.encode("ascii"))))
    what = {"ciphers": "OpenSSL accepts no cipher of %r" % cfg.ciphers,
            "cert_file": "%s is not a PEM certificate chain" % cfg.cert_file,
            "ca_file": "%s holds no PEM certificate" % cfg.ca_file}
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    for n, (key, step) in enumerate(steps):
        try:
            step(ctx)
        except (SSL.Error, UnicodeError) as exc:
            if key == "key_file":
                text = ("%s is not a PEM private key" % key_file if n == 1 else
                        "%s does not match dtls.cert_file %s" % (key_file, cfg.cert_file))
            else:
                text = what[key]
            problems.append("dtls.%s: %s (%s)" % (key, text, _openssl_reason(exc)))
            if key != "ciphers":
                break
    return problems


def peer_credential(connection: SSL.Connection, psk_identity: Optional[str]) -> Any:
    """The client credential of a completed (D)TLS handshake: its PSK identity, else its
    verified certificate as ``Certificate``, else None (token-in-path). TLS over TCP
    (``edge.tls``) uses it too."""
    if psk_identity is not None:
        return PresharedKey(psk_identity)
    peer = connection.get_peer_certificate()
    if peer is None:
        return None
    # the DER as OpenSSL holds it, parsed once (``as_cryptography`` would parse it
    # and we would encode it again)
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    cn = names[0].value if names else None
    return Certificate(certificate_id(der), cn if isinstance(cn, str) else None)


class DtlsSession:
    """One DTLS session: the CoAP endpoint's peer (``key``, ``address``, ``credential``)."""

    __slots__ = ("key", "address", "credential", "connection", "transport", "established",
                 "client_random", "psk_identity", "psk_key", "timer_due", "closed",
                 "verify_error", "shortest", "started")

    def __init__(self, key: str, address: Address, connection: SSL.Connection,
                 transport: "DtlsTransport", client_random: bytes):
        self.key = key
        self.address = address
        self.credential: Any = None
        self.connection: Optional[SSL.Connection] = connection
        self.transport = transport
        self.established = False
        self.client_random = client_random
        self.psk_identity: Optional[str] = None
        self.psk_key: Optional[bytes] = None
        self.timer_due: Optional[float] = None
        self.closed = False
        self.verify_error: Optional[str] = None  # why its certificate failed, if it did
        self.shortest = 0  # bytes: no protected record of its cipher is shorter
        self.started = 0.0  # when its handshake began (its cookie verified)

    def send(self, data: bytes) -> None:
        """A CoAP datagram for this peer: encrypted and sent (dropped once closed)."""
        self.transport.send_plaintext(self, data)

    def __str__(self) -> str:
        host, port = self.address
        return ("dtls:[%s]:%d" if ":" in host else "dtls:%s:%d") % (host, port)

    __repr__ = __str__


class DtlsTransport(DatagramProtocol):
    """The CoAPs port: DTLS sessions in front of ``coap``'s endpoint (see the module)."""

    def __init__(self, cfg: DtlsConfig, coap: Any, clock: IReactorTime,
                 psk_lookup: PskLookup, random_bytes: Callable[[int], bytes] = os.urandom):
        self.cfg = cfg
        self.coap = coap  # BridgeCoap: .received(data, peer), .trust(peer), .forget(peer)
        self.clock = clock
        # answers as of the registry now (RegistryView.psk_key refreshes its copy first:
        # a datagram that asks for no key costs no look at the registry)
        self.psk_lookup = psk_lookup
        now = clock.seconds()
        self.cookies = CookieJar(random_bytes, now)
        self.table = SessionTable(cfg.max_sessions, cfg.handshake_timeout, cfg.idle_timeout)
        self.guard = HandshakeGuard(cfg.handshake_rate, cfg.handshake_burst)
        self.stats: Dict[str, int] = {name: 0 for name in STATS}
        self.context = build_context(cfg, self._cookie_generate, self._cookie_verify)
        self._psk = psk_edge.PskServer(self.context, self._psk_key,
                                       cfg.psk_identity_hint.encode("utf-8")) \
            if cfg.psk else None
        self._hello_from: Address = ("", 0)  # whose ClientHello the listener is reading
        self._listener = self._new_listener()
        self._serial = 0
        # hash of a master secret -> (credential, PSK key) of its full handshake
        self._remembered: "OrderedDict[bytes, Tuple[Any, Optional[bytes]]]" = OrderedDict()
        # OpenSSL retransmissions: a heap of (due, key, session), stale entries (a closed
        # session, or one whose timer_due moved) left in place and skipped when on top
        self._timers: List[Tuple[float, str, DtlsSession]] = []
        self._call: Any = None
        self._armed = 0.0
        self._full_noted = float("-inf")  # when a refusal past max_sessions was last logged
        self.failures = HandshakeFailures()  # one info line a minute, not one each
        # hears each handshake's (outcome, method, seconds): outcome "full", "resumed",
        # "failed" or "timeout"; method "psk", "x509" or "none" (the metrics)
        self.on_handshake: Callable[[str, str, float], None] = lambda *_: None

    # -- the listener ----------------------------------------------------------------

    def _new_listener(self) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_accept_state()
        connection.set_ciphertext_mtu(self.cfg.mtu)
        return connection

    def _cookie_generate(self, connection: SSL.Connection) -> bytes:
        return self.cookies.make(self._hello_from, self.clock.seconds())

    def _cookie_verify(self, connection: SSL.Connection, cookie: bytes) -> bool:
        return self.cookies.check(self._hello_from, cookie, self.clock.seconds())

    def _psk_key(self, connection: SSL.Connection, raw: bytes) -> Optional[bytes]:
        session = connection.get_app_data()
        now = self.clock.seconds()
        try:
            identity = raw.decode("utf-8")
        except UnicodeDecodeError:
            identity = None
        key = None
        if identity is not None and not self.guard.known_unknown(identity, now):
            key = self.psk_lookup(identity)
            if key is None:
                self.guard.unknown(identity, now)
        if key is None:
            self.stats["unknown_psk_identity"] += 1
            log.debug("Unknown PSK identity from {peer}", peer=str(session))
            return None
        if isinstance(session, DtlsSession):
            session.psk_identity = identity
            session.psk_key = key
        return key

    # -- datagrams in ----------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Tuple[str, int]) -> None:
        address = (addr[0], addr[1])
        now = self.clock.seconds()
        self.stats["records_in"] += 1
        psk_edge.clear_errors()  # no other connection's error may pass for this one's
        data = records.whole(data)  # OpenSSL gets whole records only (see records.whole)
        if not data:
            self.stats["dropped"] += 1
            self._arm()
            return
        session = self.table.get(address)
        hello = records.client_hello(data)
        if session is not None and (hello is None or hello.random == session.client_random):
            self._feed(session, data, now)  # its own records, or its ClientHello again
        elif hello is None:
            self.stats["dropped"] += 1  # no session, not a ClientHello: nothing is sent
        else:
            self._listen(data, address, hello, now)
        self._arm()

    def _listen(self, data: bytes, address: Address, hello: records.ClientHello,
                now: float) -> None:
        listener = self._listener
        self._hello_from = address
        try:
            listener.bio_write(data)
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            # no valid cookie: the HelloVerifyRequest (or nothing, for garbage, whose
            # error OpenSSL leaves queued)
            psk_edge.clear_errors()
            self._flush_listener(address)
            return
        except SSL.Error as exc:
            psk_edge.clear_errors()
            self.stats["dropped"] += 1
            log.debug("Unreadable ClientHello from {peer}: {reason}",
                      peer="%s:%d" % address, reason=_openssl_reason(exc))
            self._listener = self._new_listener()
            return
        # the cookie verified: the address is real
        self._listener = self._new_listener()
        old = self.table.get(address)
        if old is None and self.table.full():
            self.stats["refused_full"] += 1
            if now >= self._full_noted + 60.0:  # once a minute: a flood must not flood the log
                self._full_noted = now
                log.info("DTLS handshake from {peer} refused: {count:plural:session} "
                         "(dtls.max_sessions; {refused} refused so far)", peer="%s:%d" % address,
                         count=len(self.table), refused=self.stats["refused_full"])
            return
        if not self.guard.allow(address[0], now):
            self.stats["refused_rate"] += 1
            log.debug("DTLS handshake from {peer} refused: dtls.handshake_rate",
                      peer="%s:%d" % address)
            return
        if old is not None:
            self.stats["replaced"] += 1
            log.debug("New DTLS handshake from {peer} replaces its session", peer=str(old))
            self._end(old, "replaced", notify=False)
        self._serial += 1
        session = DtlsSession("dtls %s %d %d" % (address[0], address[1], self._serial),
                              address, listener, self, hello.random)
        listener.set_app_data(session)
        session.started = now
        self.table.add(address, session, now)
        self._handshake(session, now)

    def _flush_listener(self, address: Address) -> None:
        size = psk_edge.waiting(self._listener)
        if not size:
            return
        out = self._listener.bio_read(size)
        if records.content_type(out) == records.HANDSHAKE and len(out) <= 256:
            self.stats["hello_verify_sent"] += 1
            self.transport.write(out, address)

    def _feed(self, session: DtlsSession, data: bytes, now: float) -> None:
        connection = session.connection
        assert connection is not None
        if session.established:
            # no unauthenticated record reaches it
            data = records.encrypted_only(data, session.shortest)
            if not data:
                self.stats["dropped"] += 1
                return
        try:
            connection.bio_write(data)
        except SSL.Error:
            self.stats["dropped"] += 1
            return
        if not session.established:
            self._handshake(session, now)
            if not session.established:
                return
        self.table.touch(session, now)
        self._read(session)

    def _handshake(self, session: DtlsSession, now: float) -> None:
        connection = session.connection
        assert connection is not None
        try:
            connection.do_handshake()
        except SSL.WantReadError:
            self._flush(session)
            return
        except SSL.Error as exc:
            self._flush(session)  # the alert, if OpenSSL sends one
            self.stats["handshakes_failed"] += 1
            reason = _openssl_reason(exc)
            if session.verify_error is not None:
                reason = "%s: %s" % (reason, session.verify_error)
            log.debug("DTLS handshake with {peer} failed: {reason}", peer=str(session),
                      reason=reason)
            self._failed(session, FAILED, reason, now)
            self._end(session, "handshake failed", notify=False)
            return
        self._flush(session)
        self._established(session, now)

    def _established(self, session: DtlsSession, now: float) -> None:
        connection = session.connection
        assert connection is not None
        secret = hashlib.blake2s(connection.master_key() or b"").digest()
        remembered = self._remembered
        if secret in remembered:  # only a resumed handshake shares a master secret
            session.credential, session.psk_key = remembered[secret]
            remembered.move_to_end(secret)
            self.stats["handshakes_resumed"] += 1
            kind = "resumed"
        elif psk_edge.session_reused(connection):
            # resumed, but its credential was forgotten (removed or changed, or evicted):
            # end it and drop it from OpenSSL's cache, so the client's next try is a full
            # handshake that asks the registry again (not an anonymous session)
            log.info("DTLS session with {peer} resumed a session whose credential is "
                     "gone: ended", peer=str(session))
            session.established = True  # (for its close_notify)
            self._end(session, FORGOTTEN)
            return
        else:
            session.credential = self._credential(session, connection)
            remembered[secret] = (session.credential, session.psk_key)
            while len(remembered) > MAX_REMEMBERED:
                remembered.popitem(last=False)
            self.stats["handshakes_full"] += 1
            kind = "full"
        session.established = True
        cipher = connection.get_cipher_name() or ""
        session.shortest = records.min_body(cipher)
        self.table.establish(session, now)
        self.on_handshake(kind, _method(session), now - session.started)
        self.coap.trust(session)
        log.debug("DTLS session with {peer} ({kind}, {cipher}, {credential})",
                  peer=str(session), kind=kind, cipher=cipher,
                  credential=_describe(session.credential))

    @staticmethod
    def _credential(session: DtlsSession, connection: SSL.Connection) -> Any:
        return peer_credential(connection, session.psk_identity)

    def _read(self, session: DtlsSession) -> None:
        while session.connection is not None:
            connection = session.connection
            try:
                data = connection.recv(READ)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._flush(session)
                log.debug("DTLS session with {peer} closed by the peer", peer=str(session))
                self._end(session, "closed by peer", notify=False)
                return
            except SSL.Error as exc:
                self.stats["alerts"] += 1
                log.debug("DTLS session with {peer} ended: {reason}", peer=str(session),
                          reason=_openssl_reason(exc))
                self._end(session, "error", notify=False)
                return
            self.coap.received(data, session)
        self._flush(session)

    # -- out -------------------------------------------------------------------------

    def send_plaintext(self, session: DtlsSession, data: bytes) -> None:
        connection = session.connection
        if connection is None or not session.established:
            return
        psk_edge.clear_errors()
        try:
            connection.send(data)
        except SSL.Error as exc:
            log.info("Cannot send to {peer}: {reason}", peer=str(session),
                     reason=_openssl_reason(exc))
            return
        self._flush(session)

    def _flush(self, session: DtlsSession) -> None:
        connection = session.connection
        if connection is None:
            return
        size = psk_edge.waiting(connection)
        blob = connection.bio_read(size) if size else b""
        if blob and self.transport is not None:
            for datagram in records.datagrams(blob, self.cfg.mtu):
                self.stats["records_out"] += 1
                self.transport.write(datagram, session.address)
        if not session.established:
            self._retransmission(session)

    def _retransmission(self, session: DtlsSession) -> None:
        connection = session.connection
        if connection is None:
            return
        left = connection.DTLSv1_get_timeout()
        if left is None:
            session.timer_due = None
            return
        due = self.clock.seconds() + left
        if session.timer_due is None or due < session.timer_due:
            session.timer_due = due
            heapq.heappush(self._timers, (due, session.key, session))

    # -- ending ----------------------------------------------------------------------

    def _end(self, session: DtlsSession, reason: str, notify: bool = True) -> None:
        if session.closed:
            return
        session.closed = True
        connection = session.connection
        if notify and connection is not None and session.established:
            psk_edge.clear_errors()
            try:
                connection.shutdown()  # close_notify
            except SSL.Error:
                pass  # the session is broken already: nothing to tell the peer
            self._flush(session)
            if reason in UNRESUMABLE:
                # freed without SENT_SHUTDOWN, OpenSSL removes it from its session cache
                connection.set_shutdown(connection.get_shutdown() & ~SSL.SENT_SHUTDOWN)
        elif connection is not None and session.established and reason != "error":
            # quietly, yet resumable: OpenSSL removes a session freed without a shutdown
            # from its cache (a replaced one, one the peer closed, one ended at exit)
            connection.set_shutdown(connection.get_shutdown() | SSL.SENT_SHUTDOWN)
        self.table.remove(session)
        self.coap.forget(session)
        session.connection = None
        if connection is not None:
            connection.set_app_data(None)

    def end_sessions(self, predicate: Callable[[Any], bool]) -> int:
        """End (close_notify) the sessions whose credential ``predicate`` accepts (sessions
        without a client credential are not asked); forget them for resumption too."""
        ended = 0
        for session in self.table.sessions():
            if session.credential is not None and predicate(session.credential):
                log.info("DTLS session with {peer} ended: {credential} left the registry",
                         peer=str(session), credential=_describe(session.credential))
                self._end(session, "credential removed")
                ended += 1
        for secret in [s for s, (cred, _) in self._remembered.items()
                       if cred is not None and predicate(cred)]:
            del self._remembered[secret]
        self.stats["ended_by_registry"] += ended
        self.guard.forget()
        self._arm()
        return ended

    def end_changed_keys(self, psk_lookup: PskLookup) -> int:
        """End the PSK sessions whose identity now has another key (and forget those for
        resumption)."""
        ended = 0
        for session in self.table.sessions():
            credential = session.credential
            if isinstance(credential, PresharedKey) and session.psk_key is not None:
                key = psk_lookup(credential.identity)
                if key is not None and key != session.psk_key:
                    log.info("DTLS session with {peer} ended: the key of its PSK identity "
                             "changed", peer=str(session))
                    self._end(session, "key changed")
                    ended += 1
        for secret in [s for s, (cred, key) in self._remembered.items()
                       if isinstance(cred, PresharedKey) and key is not None
                       and psk_lookup(cred.identity) not in (None, key)]:
            del self._remembered[secret]
        self.stats["ended_by_registry"] += ended
        self._arm()
        return ended

    # -- time ------------------------------------------------------------------------

    def startProtocol(self) -> None:
        self._arm()

    def stopProtocol(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for session in self.table.sessions():
            self._end(session, "stopping", notify=False)

    def close_all(self) -> None:
        """Send every established session its close_notify (the port is closing)."""
        for session in self.table.sessions():
            self._end(session, "stopping")

    def _next_due(self) -> float:
        due = self.clock.seconds() + 10.0  # the guard's sweep
        timers = self._timers
        while timers and (timers[0][2].closed or timers[0][2].timer_due != timers[0][0]):
            heapq.heappop(timers)
        if timers:
            due = min(due, timers[0][0])
        table_due = self.table.next_due()
        if table_due is not None:
            due = min(due, table_due)
        return due

    def _arm(self) -> None:
        due = self._next_due()
        if self._call is not None:
            if due >= self._armed:
                return
            self._call.cancel()
        self._armed = due
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        timers, fired = self._timers, []
        while timers and timers[0][0] <= now:
            fired.append(heapq.heappop(timers))
        for due, _, session in fired:
            if session.closed or session.timer_due != due:
                continue
            session.timer_due = None
            connection = session.connection
            if connection is None:
                continue
            psk_edge.clear_errors()
            try:
                connection.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                log.debug("DTLS handshake with {peer} failed: {reason}", peer=str(session),
                          reason=_openssl_reason(exc))
                self._failed(session, FAILED, _openssl_reason(exc), now)
                self._end(session, "retransmission failed", notify=False)
                continue
            self._flush(session)
        for session, reason in self.table.due(now):
            if reason == "idle":
                self.stats["idle_ended"] += 1
                log.debug("DTLS session with {peer} idle: ended", peer=str(session))
                session_notify = True
            else:
                self.stats["handshake_timeouts"] += 1
                log.debug("DTLS handshake with {peer} not finished within {timeout} s "
                          "(a wrong PSK fails this way)", peer=str(session),
                          timeout=self.cfg.handshake_timeout)
                self._failed(session, TIMED_OUT, "not finished in time", now)
                session_notify = False
            self._end(session, reason, notify=session_notify)
        self.guard.sweep(now)
        self._summarise(now)
        self._arm()

    def _failed(self, session: DtlsSession, kind: str, reason: str, now: float) -> None:
        self.failures.record(kind, session.address[0], reason, now)
        self.on_handshake("failed" if kind == FAILED else "timeout", _method(session),
                          now - session.started)
        self._summarise(now)

    def _summarise(self, now: float) -> None:
        line = self.failures.summary(now)
        if line is not None:
            log.info(line[0], **line[1])

    # -- metrics ---------------------------------------------------------------------

    @property
    def sessions_established(self) -> int:
        return self.table.established

    @property
    def sessions_handshaking(self) -> int:
        return self.table.handshaking


def _method(session: DtlsSession) -> str:
    """How the device authenticates (or tried to): "psk", "x509" or "none"."""
    if session.psk_identity is not None or isinstance(session.credential, PresharedKey):
        return "psk"
    if isinstance(session.credential, Certificate) or session.verify_error is not None:
        return "x509"
    return "none"


def _describe(credential: Any) -> str:
    if isinstance(credential, PresharedKey):
        return "PSK identity %s" % mask(credential.identity)
    if isinstance(credential, Certificate):
        return "certificate %s%s" % (credential.sha3[:16],
                                     " CN=%s" % credential.cn if credential.cn else "")
    return "no client credential"


def listen(reactor: IReactorUDP, protocol: DtlsTransport, port: int, interface: str,
           shared: bool = False, inherited: Optional[int] = None) -> Any:
    """``shared``: one worker of several (``coap.workers``), the port bound with
    ``SO_REUSEPORT`` beside the others'; the kernel keeps each source on one worker.
    ``inherited``: on the socket the supervisor handed over (``bridge.edge.udp``)."""
    return udp.listen_udp(reactor, protocol, port, interface, RECEIVE_BUFFER, shared,
                          inherited)
