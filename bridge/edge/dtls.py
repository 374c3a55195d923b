"""CoAP over DTLS 1.2 (CoAPs, port 5684): the Twisted side of the sans-IO DTLS server.

``DtlsTransport`` is a ``DatagramProtocol`` that moves ciphertext between a UDP port
and ``bridge.dtls.server.DtlsServer`` (which does everything OpenSSL does, over memory
BIOs, and takes ``now`` from here), keeps one reactor timer at the server's
``get_timer()`` (``edge/timer.py``), and turns the server's events into calls of its
own CoAP message layer's driver (``edge/datagram.py``, the one plain UDP uses too): the
plaintext of each record is one CoAP datagram from the session's ``DtlsPeer``, a
finished handshake makes the peer trusted (its address is proved, RFC 7252 §11.3), an
ended session is forgotten (its observe relations end), and what the layer sends to a
peer comes back here to be encrypted. It also logs what an operator reads about sessions (with PSK
identities masked like tokens), sums up failed handshakes once a minute
(``dtls.failures``), and checks the DTLS files at start (``check_config``).

Not here: DTLS Connection ID (RFC 9146; no OpenSSL release has it, P10 in
../shared/spec/dtls-notes.md). With it, a record would be mapped to its session by the
CID in its header instead of by source address in ``DtlsServer.receive_datagram``, and
the session's address updated on a valid record from a new one; docs/device-api.md says
what that would change.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

from ..core.auth import Certificate, PresharedKey
from ..dtls import bindings, context
from ..dtls.context import credential_of as peer_credential  # noqa: F401 (edge.stream's)
from ..dtls.context import openssl_reason, use_key
from ..dtls.events import (FAILED, DtlsPeer, HandshakeFailed, Plaintext, SessionEnded,
                           SessionEstablished)
from ..dtls.failures import HandshakeFailures
from ..dtls.server import STATS, DtlsServer, PskLookup  # noqa: F401 (STATS: the metrics')
from ..logs import debugging, logger
from ..registry import mask
from ..settings import DtlsConfig
from .dtls_keys import KeyProblem, load_key
from . import udp
from .datagram import DatagramDriver
from .sendto import SEND_ERRORS, SendFailures
from .timer import OneTimer

log = logger("dtls")

RECEIVE_BUFFER = 65535

# why a session ended -> the info line an operator reads (the others: debug, by the server)
_ENDED = {"credential removed": "DTLS session with {peer} ended: {credential} left the "
                                "registry",
          "key changed": "DTLS session with {peer} ended: the key of its PSK identity changed"}


def _unheard(*_: Any) -> None:
    """No one listens for it."""


class DtlsTransport(DatagramProtocol):
    """The CoAPs port: a ``DtlsServer`` in front of the message layer ``coap`` drives (see
    the module). ``in_use(peer)``: whether a session silent for ``dtls.idle_timeout`` is
    still in use (the bridge: it has observe relations)."""

    def __init__(self, cfg: DtlsConfig, coap: DatagramDriver, clock: IReactorTime,
                 psk_lookup: PskLookup, random_bytes: Callable[[int], bytes] = os.urandom,
                 in_use: Optional[Callable[[DtlsPeer], bool]] = None,
                 on_handshake: Optional[Callable[[str, str, float], None]] = None):
        self.cfg = cfg
        self.clock = clock
        # answers as of the registry now (RegistryView.psk_key refreshes its copy first:
        # a datagram that asks for no key costs no look at the registry)
        self.server = DtlsServer(cfg, psk_lookup, random_bytes, clock.seconds(), log, in_use,
                                 load_key(cfg) if cfg.cert_file else None)
        self.coap = coap
        coap.transmit = self.send
        self.failures = HandshakeFailures()  # one info line a minute, not one each
        self.send_failures = SendFailures(clock, "dtls")
        # hears each handshake's (outcome, method, seconds): outcome "full", "resumed",
        # "failed" or "timeout"; method "psk", "x509" or "none" (the metrics)
        self.on_handshake: Callable[[str, str, float], None] = on_handshake or _unheard
        self.timer = OneTimer(clock, self._fire)

    # -- datagrams ---------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Tuple[str, int]) -> None:
        server = self.server
        events = server.receive_datagram(data, (addr[0], addr[1]), self.clock.seconds())
        if events:
            self._handle(events)
        out = server.datagrams_to_send()
        if out:
            self._write(out)
        if server.timer_earlier:  # else the timer armed is early enough
            self.timer.arm(server.get_timer())

    def send(self, data: bytes, peer: DtlsPeer) -> None:
        """A CoAP datagram for ``peer``: encrypted and sent (dropped once it ended)."""
        server = self.server
        server.send(peer, data, self.clock.seconds())
        out = server.datagrams_to_send()
        if out:
            self._write(out)

    def _write(self, out: List[Tuple[bytes, Tuple[str, int]]]) -> None:
        if self.transport is not None:
            write = self.transport.write
            for datagram, address in out:
                try:
                    write(datagram, address)
                except SEND_ERRORS as exc:  # dropped as the network would (edge/sendto.py)
                    self.send_failures.failed(exc, address)

    def _handle(self, events: Sequence[Any]) -> None:
        received = self.coap.received
        for event in events:
            if type(event) is Plaintext:
                received(event.data, event.peer)
            else:
                self._event(event)

    def _pump(self) -> None:
        """The server's events to their handlers, its datagrams to the port, the timer."""
        events = self.server.events()
        if events:
            self._handle(events)
        self._write(self.server.datagrams_to_send())
        self.timer.arm(self.server.get_timer())

    def _event(self, event: Any) -> None:
        if type(event) is SessionEstablished:
            self.on_handshake("resumed" if event.resumed else "full", event.method,
                              event.seconds)
            if debugging():
                log.debug("DTLS session with {peer} ({kind}, {cipher}, {credential})",
                          peer=str(event.peer), kind="resumed" if event.resumed else "full",
                          cipher=event.cipher, credential=describe(event.credential))
            self.coap.trust(event.peer)
        elif type(event) is SessionEnded:
            if event.reason in _ENDED:
                log.info(_ENDED[event.reason], peer=str(event.peer),
                         credential=describe(event.peer.credential))
            self.coap.forget(event.peer)
        elif type(event) is HandshakeFailed:
            now = self.clock.seconds()
            self.on_handshake("failed" if event.outcome == FAILED else "timeout",
                              event.method, event.seconds)
            self.failures.record(event.outcome, event.address[0], event.reason, now)
            self._summarise(now)

    def _summarise(self, now: float) -> None:
        line = self.failures.summary(now)
        if line is not None:
            log.info(line[0], **line[1])

    # -- the registry changed, the port closes -----------------------------------------

    def end_sessions(self, predicate: Callable[[Any], bool]) -> int:
        """End (close_notify) the sessions whose credential ``predicate`` accepts, and
        forget them for resumption (``DtlsServer.end_sessions``)."""
        ended = self.server.end_sessions(predicate)
        self._pump()
        return ended

    def end_changed_keys(self, psk_lookup: PskLookup) -> int:
        """End the PSK sessions whose identity now has another key."""
        ended = self.server.end_changed_keys(psk_lookup)
        self._pump()
        return ended

    def close_all(self) -> None:
        """Send every established session its close_notify (the port is closing)."""
        self.server.close_all()
        self._pump()

    def startProtocol(self) -> None:
        self.coap.start()
        self.timer.arm(self.server.get_timer())

    def stopProtocol(self) -> None:
        self.timer.cancel()
        self.server.close_all(notify=False)
        self.server.datagrams_to_send()  # the port is gone: nothing more goes out
        for event in self.server.events():
            if type(event) is SessionEnded:
                self.coap.forget(event.peer)
        self.coap.stop()

    # -- time --------------------------------------------------------------------------

    def _fire(self) -> None:
        now = self.clock.seconds()
        events = self.server.handle_timer(now)
        if events:
            self._handle(events)
        self._summarise(now)
        self._pump()

    # -- metrics -----------------------------------------------------------------------

    @property
    def stats(self) -> Dict[str, int]:
        return self.server.stats

    @property
    def sessions_established(self) -> int:
        return self.server.sessions_established

    @property
    def sessions_handshaking(self) -> int:
        return self.server.sessions_handshaking


def load_identity(ctx: SSL.Context, cfg: DtlsConfig) -> None:
    """The bridge's certificate and key (read here: ``dtls_keys``), the device CA and the
    server-side session cache on a (D)TLS context: TLS over TCP (``edge.tls``) shares it
    with the DTLS server's context (``dtls.context``)."""
    context.load_identity(ctx, cfg, load_key(cfg) if cfg.cert_file else None)


def describe(credential: Any) -> str:
    """A session's credential for the log: a PSK identity masked like a token."""
    if isinstance(credential, PresharedKey):
        return "PSK identity %s" % mask(credential.identity)
    if isinstance(credential, Certificate):
        return "certificate %s%s" % (credential.sha3[:16],
                                     " CN=%s" % credential.cn if credential.cn else "")
    return "no client credential"


def check_config(cfg: DtlsConfig) -> List[str]:
    """Problems with the DTLS files, one line each, for ``bridge.startup_checks`` (OpenSSL
    and cryptography read the files here, before any socket opens), and the OpenSSL
    functions the DTLS server calls through cryptography's bindings."""
    try:
        bindings.require()
    except bindings.BindingsMissing as exc:
        return ["dtls: %s" % exc]
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
    # last, as in dtls.context.build_context
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
            problems.append("dtls.%s: %s (%s)" % (key, text, openssl_reason(exc)))
            if key != "ciphers":
                break
    return problems


def listen(reactor: IReactorUDP, protocol: DtlsTransport, port: int, interface: str,
           shared: bool = False, inherited: Optional[int] = None) -> Any:
    """``shared``: one worker of several (``coap.workers``), the port bound with
    ``SO_REUSEPORT`` beside the others'; the kernel keeps each source on one worker.
    ``inherited``: on the socket the supervisor handed over (``bridge.edge.udp``)."""
    return udp.listen_udp(reactor, protocol, port, interface, RECEIVE_BUFFER, shared,
                          inherited)
