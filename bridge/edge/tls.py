"""TLS for CoAP over TCP and WebSockets (coaps+tcp, coaps+ws): Twisted's TLS layer with
the bridge's certificate, device CA, cipher list and PSK callback of CoAPs.

The same rules as DTLS (``edge.dtls``): a client certificate is asked for, not
required, and one that is presented must chain to the CA file; its credential
is ThingsBoard's certificate id (``dtls.context.credential_of``); a PSK identity is
looked up in the registry's in-memory view through the same callback
(``bridge.dtls.psk``: OpenSSL's server callback serves TLS 1.2 PSK suites as DTLS
ones); without either, the token in the path authenticates. TLS 1.2 and 1.3.
Tickets are off and the server-side cache holds sessions, as for DTLS.

PSK over TLS 1.3 goes through the same callback: OpenSSL hands a TLS 1.3
external PSK's identity to the TLS 1.2-style server callback and uses the key
with SHA-256 (RFC 8446 §4.2.11's default for an external PSK). It skips the
PSK, and falls back to a certificate handshake, when the suite it picked hashes
otherwise: it picks by the client's order (OpenSSL's own client puts
TLS_AES_256_GCM_SHA384 first) and prefers SHA-256 for PSKs only on a server
without a certificate. So with ``psk`` on, TLS 1.3 offers the SHA-256 suites
only: TLS_AES_128_GCM_SHA256, which every TLS 1.3 client has (RFC 8446 §9.1),
and TLS_CHACHA20_POLY1305_SHA256, the client's order choosing between them
(a server preference would reorder the TLS 1.2 list too).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from ..settings import DtlsConfig
from ..dtls import psk as psk_edge
from ..dtls.context import openssl_reason as _openssl_reason
from ..logs import logger
from .dtls import load_identity

log = logger("tls")

PskLookup = Callable[[str], Optional[bytes]]
# the TLS 1.3 suites with psk on: SHA-256 ones only (see the module)
PSK_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"


def build_context(cfg: DtlsConfig) -> SSL.Context:
    """A TLS 1.2+ server context (raises ``SSL.Error`` or ``OSError`` on a bad file)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    load_identity(ctx, cfg)
    ctx.set_cipher_list(cfg.ciphers.encode("ascii"))
    if cfg.psk:  # a TLS 1.3 PSK needs a SHA-256 suite (see the module)
        psk_edge.set_tls13_suites(ctx, PSK_TLS13_SUITES)
    return ctx


def check_config(cfg: DtlsConfig) -> List[str]:
    """Problems with the TLS files, one line each, for ``config.load``."""
    try:
        build_context(cfg)
    except (SSL.Error, OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            _openssl_reason(exc)
        return ["reliable: TLS context from cert_file %r, key_file %r, ca_file %r: %s"
                % (cfg.cert_file, cfg.key_file, cfg.ca_file, reason)]
    return []


@implementer(IOpenSSLServerConnectionCreator)
class TlsCreator:
    """One context for every TLS connection of a listener (see the module docstring)."""

    def __init__(self, cfg: DtlsConfig, psk_lookup: PskLookup):
        self.context = build_context(cfg)
        self.psk_lookup = psk_lookup
        self._psk = psk_edge.PskServer(self.context, self._psk_key, log,
                                       cfg.psk_identity_hint.encode("utf-8")) \
            if cfg.psk and psk_edge.supported() else None

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(protocol)  # Twisted's TLS protocol (its info callback)
        inner = getattr(protocol, "wrappedProtocol", None)
        if inner is not None:
            inner.tls_connection = connection
        return connection

    def _psk_key(self, connection: SSL.Connection, raw: bytes) -> Optional[bytes]:
        try:
            identity = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        key = self.psk_lookup(identity)
        if key is not None:
            inner = getattr(connection.get_app_data(), "wrappedProtocol", None)
            if inner is not None:
                inner.psk_identity = identity
        return key
