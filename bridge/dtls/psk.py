"""Pre-shared keys for a pyOpenSSL server context, through cryptography's OpenSSL bindings.

pyOpenSSL has no PSK API (the maintainers declined one, pyca/pyopenssl#704), but
cryptography's cffi bindings export ``SSL_CTX_set_psk_server_callback`` and
``SSL_CTX_use_psk_identity_hint`` (added for this use, pyca/cryptography#4084).
This module is the one place that reaches under pyOpenSSL for them: the context's
``SSL_CTX`` pointer (``Context._context``) and the ``SSL *`` -> ``Connection`` map
pyOpenSSL keeps for its own callbacks (``Connection._reverse_mapping``). Both exist
in pyOpenSSL 24.3 (the PyPy 3.9 pin) and 26.x, as does the outgoing memory BIO
(``Connection._from_ssl``) that ``waiting`` measures; ``tests/edge/test_psk.py`` runs a
real PSK handshake over memory BIOs so a change there shows at once.

OpenSSL calls the server callback synchronously in the middle of the handshake
(openssl/openssl#19358), so ``lookup`` must answer from memory: it reads the
registry's in-memory view. It gets the ``Connection`` and the identity (bytes, as
the client sent them) and returns the key, or None for an unknown identity (OpenSSL
then sends the unknown_psk_identity alert). An exception in ``lookup`` is handed to
``log.failure`` (the injected logger: this module does no I/O) and treated as unknown:
it must not unwind through OpenSSL's C frames.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

_binding = Binding()
ffi, lib = _binding.ffi, _binding.lib

PskLookup = Callable[[SSL.Connection, bytes], Optional[bytes]]
MAX_IDENTITY = 128  # RFC 4279 §5.3 allows up to 2^16-1; OpenSSL caps it at 128


def clear_errors() -> None:
    """Empty OpenSSL's error queue (one per thread). ``SSL_get_error`` reports
    SSL_ERROR_SSL whenever the queue holds anything, so an error another connection
    left there (``DTLSv1_listen`` queues one for a garbled ClientHello and still
    returns 0) would make the next read on any session look fatal; the transport
    calls this before each call into OpenSSL whose failure it acts on."""
    lib.ERR_clear_error()


def waiting(connection: SSL.Connection) -> int:
    """Bytes OpenSSL has written to ``connection``'s outgoing memory BIO and nobody has
    read yet: reading exactly that many empties it in one ``bio_read`` (pyOpenSSL raises
    ``WantReadError`` on an empty BIO, which costs more than the read)."""
    return int(lib.BIO_get_mem_data(connection._from_ssl, ffi.NULL))


def set_tls13_suites(ctx: SSL.Context, suites: bytes) -> None:
    """``ctx.set_tls13_ciphersuites(suites)``, through the bindings where pyOpenSSL has no
    such method (25.1, the newest that installs beside PyPy 3.9's cryptography < 44:
    scripts/pypy-constraints.txt); the same OpenSSL call, ``SSL_CTX_set_ciphersuites``."""
    setter = getattr(ctx, "set_tls13_ciphersuites", None)
    if setter is not None:
        setter(suites)
        return
    lib.ERR_clear_error()
    if lib.SSL_CTX_set_ciphersuites(ctx._context, suites) != 1:
        lib.ERR_clear_error()
        raise SSL.Error([("SSL routines", "SSL_CTX_set_ciphersuites", "no cipher match")])


def supported() -> bool:
    return hasattr(lib, "SSL_CTX_set_psk_server_callback")


class PskServer:
    """Installs the PSK server callback on ``context``; keep this object as long as the
    context (it holds the C callback)."""

    def __init__(self, context: SSL.Context, lookup: PskLookup, log: Any, hint: bytes = b""):
        if not supported():
            raise RuntimeError("this cryptography build has no SSL_CTX_set_psk_server_callback")
        self.lookup = lookup
        self.log = log  # has .failure(text): called inside the except clause
        self._callback = ffi.callback(
            "unsigned int (*)(SSL *, const char *, unsigned char *, unsigned int)",
            self._on_identity)
        ctx = context._context  # the SSL_CTX *
        lib.SSL_CTX_set_psk_server_callback(ctx, self._callback)
        if hint:
            lib.SSL_CTX_use_psk_identity_hint(ctx, hint)

    def _on_identity(self, ssl: Any, identity: Any, out: Any, room: int) -> int:
        try:
            connection = SSL.Connection._reverse_mapping.get(ssl)
            if connection is None or identity == ffi.NULL:
                return 0
            key = self.lookup(connection, ffi.string(identity, MAX_IDENTITY))
            if not key or len(key) > room:
                return 0
            ffi.memmove(out, key, len(key))
            return len(key)
        except Exception:
            self.log.failure("PSK lookup failed")
            return 0


def session_reused(connection: SSL.Connection) -> bool:
    """Whether ``connection``'s handshake resumed a cached session (pyOpenSSL has no
    ``SSL_session_reused``; its ``SSL *`` is ``Connection._ssl``, in 24.3 and 26.x)."""
    return bool(lib.SSL_session_reused(connection._ssl))
