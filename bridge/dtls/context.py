"""The OpenSSL side of the DTLS server that is not per datagram: the server context, the
verified credential of a finished handshake, OpenSSL's error text.

Computation only (pyOpenSSL and cryptography, as aioquic imports cryptography): the
certificate files are read by OpenSSL when the context is built, which the edge does
at start, after ``edge.dtls.check_config`` has checked them; the private key is read by
the edge (``edge.dtls_keys``, which opens an encrypted one with ``dtls.key_password``)
and handed in.
"""

from __future__ import annotations

from typing import Any, Optional

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from ..core.auth import Certificate, PresharedKey, certificate_id
from . import psk

DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION; pyOpenSSL names only the TLS ones
SESSION_ID_CONTEXT = b"coapbridge"
SESSION_LIFETIME = 86400  # s a session may be resumed


def note_verify_error(connection: Optional[SSL.Connection], cert: Any, error: int, depth: int,
                      ok: int) -> bool:
    """OpenSSL's verdict on one certificate of a client chain, unchanged; a failure is
    noted on the session (the connection's app data) for the log line: OpenSSL itself
    only says "verify failed"."""
    if not ok and connection is not None:
        session = connection.get_app_data()
        if session is not None and getattr(session, "verify_error", "") is None:
            text = psk.ffi.string(psk.lib.X509_verify_cert_error_string(error))
            session.verify_error = "%s (depth %d)" % (text.decode("ascii", "replace"), depth)
    return bool(ok)


def use_key(ctx: SSL.Context, key: Any) -> None:
    """cryptography's key into the context (pyOpenSSL before 24.3 takes only its PKey)."""
    try:
        ctx.use_privatekey(key)
    except TypeError:
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))


def load_identity(ctx: SSL.Context, cfg: Any, private_key: Any = None) -> None:
    """The bridge's certificate and ``private_key`` (None: OpenSSL reads ``key_file``, or
    the key after the certificates in ``cert_file``), the device CA, and the server-side
    session cache, on a DTLS or a TLS context (TLS over TCP, ``edge.tls``, shares it)."""
    if cfg.cert_file:
        ctx.use_certificate_chain_file(cfg.cert_file)
        if private_key is not None:
            use_key(ctx, private_key)
        else:
            ctx.use_privatekey_file(cfg.key_file or cfg.cert_file)
        ctx.check_privatekey()
    if cfg.ca_file:
        ctx.load_verify_locations(cfg.ca_file)
        # WANTED, as ThingsBoard: asked for, not required (token devices use DTLS too);
        # a chain that is presented is verified by OpenSSL
        ctx.set_verify(SSL.VERIFY_PEER, note_verify_error)
        ctx.set_verify_depth(8)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_timeout(SESSION_LIFETIME)


def build_context(cfg: Any, private_key: Any = None) -> SSL.Context:
    """The server context for ``cfg`` (the ``dtls`` settings) with the bridge's
    ``private_key`` (cryptography's, read by the edge: ``edge.dtls_keys``; None: OpenSSL
    reads ``key_file``, or the key after the certificates in ``cert_file``); raises
    ``SSL.Error`` or ``OSError`` on a bad file. The cookie callbacks are the server's
    to install (``bindings.CookieCallbacks``): ``DTLSv1_listen`` is called through the
    bindings, which pyOpenSSL's callback helpers do not expect."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_COOKIE_EXCHANGE | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_NO_TICKET)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    load_identity(ctx, cfg, private_key)
    # last: pyOpenSSL before 26 checks the list on a throw-away Connection, after which
    # it warns about (and will refuse) any change to the context
    ctx.set_cipher_list(cfg.ciphers.encode("ascii"))
    return ctx


def openssl_reason(exc: Exception) -> str:
    """OpenSSL's own words for an ``SSL.Error``."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(entry[-1]) for entry in args[0])
    return str(exc) or type(exc).__name__


def credential_of(connection: SSL.Connection, psk_identity: Any) -> Any:
    """What a full handshake verified: the PSK identity its callback saw, or the client
    certificate (its ThingsBoard id and subject CN), or None."""
    if psk_identity is not None:
        return PresharedKey(psk_identity)
    peer = connection.get_peer_certificate()
    if peer is None:
        return None
    # the DER as OpenSSL holds it, parsed once (``as_cryptography`` would parse it and
    # we would encode it again)
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    cn = names[0].value if names else None
    return Certificate(certificate_id(der), cn if isinstance(cn, str) else None)
