"""OpenSSL's per-datagram DTLS calls through cryptography's bindings, under pyOpenSSL.

Why not pyOpenSSL's methods on this path: each wraps one C call in Python that costs
more than the call itself for a DTLS record: ``recv`` and ``bio_read`` allocate a
fresh buffer of the size asked every time, every ``WANT_READ`` (the normal end of
each step of a handshake over memory BIOs) is raised as ``WantReadError`` and caught,
``DTLSv1_listen`` allocates and frees a ``BIO_ADDR`` per call, ``master_key`` asks
OpenSSL twice, and the cookie and verify callbacks go through helpers that look the
``Connection`` up and wrap each certificate in an ``X509`` object. Measured with
``bench/dtlsprofile.py`` (callgrind), these wrappers were the largest Python share of
a PSK handshake (docs/performance.md, "DTLS"). Here the same OpenSSL functions are
called on the ``SSL *`` and the memory ``BIO *`` pyOpenSSL made, with buffers allocated
once, and outcomes returned as plain values.

pyOpenSSL stays the owner of everything that is not per datagram: it builds the
``Context`` (certificates, keys, ciphers, the session cache) and each ``Connection``
(``SSL_new``, its two memory BIOs, their ``SSL_free``), as the design card says
(pyOpenSSL for DTLS); nothing here allocates or frees an ``SSL`` or a ``BIO``. No TLS
of our own either: OpenSSL does every handshake and every record.

What this reaches under pyOpenSSL (private attributes, present in 24.3, the PyPy pin,
and in 26.x): ``Context._context`` (the ``SSL_CTX *``), ``Connection._ssl``,
``_into_ssl`` and ``_from_ssl`` (its ``SSL *`` and memory BIOs) and
``Connection._reverse_mapping`` (``SSL *`` -> ``Connection``, for the callbacks).
``tests/dtls/test_bindings.py`` runs real handshakes through them, so a pyOpenSSL that
renames one fails there at once.

Every function used is checked at import (``MISSING``); ``require()`` (called when a
DTLS server is built, at start) raises ``BindingsMissing`` naming those absent from
the installed cryptography, instead of an ``AttributeError`` at the first datagram.

Single-threaded, as the reactor is: the read buffers are shared by all sessions.
"""

from __future__ import annotations

from hmac import compare_digest as _same
from typing import Any, Callable, Dict, Optional, Union

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

_binding = Binding()
ffi, lib = _binding.ffi, _binding.lib

NEEDED = ("BIO_write", "BIO_read", "BIO_get_mem_data", "SSL_do_handshake", "SSL_read",
          "SSL_write", "SSL_get_error", "SSL_set_mtu", "SSL_shutdown", "SSL_pending",
          "Cryptography_DTLSv1_get_timeout", "DTLSv1_handle_timeout", "DTLSv1_listen",
          "BIO_ADDR_new", "SSL_get_session", "SSL_SESSION_get_master_key",
          "SSL_session_reused", "SSL_get_current_cipher", "SSL_CIPHER_get_name",
          "ERR_get_error", "ERR_reason_error_string", "ERR_clear_error", "ERR_peek_error",
          "SSL_CTX_set_cookie_generate_cb", "SSL_CTX_set_cookie_verify_cb",
          "SSL_CTX_set_verify", "X509_STORE_CTX_get_error", "X509_STORE_CTX_get_error_depth",
          "X509_STORE_CTX_get_ex_data", "SSL_get_ex_data_X509_STORE_CTX_idx",
          "SSL_ERROR_WANT_READ", "SSL_ERROR_ZERO_RETURN")
MISSING = tuple(name for name in NEEDED if not hasattr(lib, name))


class BindingsMissing(RuntimeError):
    pass


def require() -> None:
    """Raise ``BindingsMissing`` if the installed cryptography lacks a function this
    module calls."""
    if MISSING:
        import cryptography
        raise BindingsMissing(
            "cryptography %s's OpenSSL bindings lack %s, which the DTLS server calls; "
            "install the cryptography release setup.cfg names"
            % (cryptography.__version__, ", ".join(MISSING)))


# the outcome of a handshake step or a read that gave no plaintext
WANT = 0  # OpenSSL waits for the peer (SSL_ERROR_WANT_READ)
DONE = 1  # the handshake finished
CLOSED = 2  # close_notify received (SSL_ERROR_ZERO_RETURN)
FAILED = 3  # anything else: ``reason()`` says what

MAX_RECORD = 16384 + 2048  # a DTLS 1.2 record's body at most (RFC 6347 §4.1)
OUT_CHUNK = 65536  # read from an outgoing BIO at a time (a flight is one or two)

if not MISSING:
    _WANT_READ, _ZERO_RETURN = lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_ZERO_RETURN
    _in = ffi.new("unsigned char[]", MAX_RECORD)  # plaintext of one record
    _out = ffi.new("unsigned char[]", OUT_CHUNK)  # ciphertext of a flight
    _master = ffi.new("unsigned char[]", 256)
    # Cryptography_DTLSv1_get_timeout's out-parameters, typed as the binding declares
    # them (int64_t in cryptography 50, time_t before)
    _timeout_args = ffi.typeof(lib.Cryptography_DTLSv1_get_timeout).args
    _seconds, _micros = ffi.new(_timeout_args[1]), ffi.new(_timeout_args[2])
    _address = ffi.gc(lib.BIO_ADDR_new(), lib.BIO_ADDR_free)  # DTLSv1_listen's (unused)
    _do_handshake, _get_error, _ssl_read = lib.SSL_do_handshake, lib.SSL_get_error, lib.SSL_read
    _bio_write, _bio_read = lib.BIO_write, lib.BIO_read
    _buffer = ffi.buffer


def feed(connection: SSL.Connection, data: bytes) -> bool:
    """``data`` (whole records) into ``connection``'s incoming memory BIO."""
    return _bio_write(connection._into_ssl, data, len(data)) == len(data)


def handshake(connection: SSL.Connection) -> int:
    """One step of the handshake: DONE, WANT or FAILED."""
    ssl = connection._ssl
    result = _do_handshake(ssl)
    if result == 1:
        return DONE
    return WANT if _get_error(ssl, result) == _WANT_READ else FAILED


def read(connection: SSL.Connection, size: int) -> Union[bytes, int]:
    """The plaintext of the next record (at most ``size`` bytes, ``size`` at most
    ``MAX_RECORD``), or WANT, CLOSED or FAILED."""
    ssl = connection._ssl
    result = _ssl_read(ssl, _in, size)
    if result > 0:
        return _buffer(_in, result)[:]
    error = _get_error(ssl, result)
    return WANT if error == _WANT_READ else CLOSED if error == _ZERO_RETURN else FAILED


def write(connection: SSL.Connection, data: bytes) -> bool:
    """``data`` as one record (``SSL_write``; nothing for b""); False if OpenSSL
    refused it (``reason()``)."""
    return not data or lib.SSL_write(connection._ssl, data, len(data)) == len(data)


def drain(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL wrote to ``connection``'s outgoing memory BIO (b"" if nothing)."""
    bio = connection._from_ssl
    size = _bio_read(bio, _out, OUT_CHUNK)
    if size <= 0:
        return b""
    data = _buffer(_out, size)[:]
    while size == OUT_CHUNK:  # more than one chunk: rare (a long certificate chain)
        size = _bio_read(bio, _out, OUT_CHUNK)
        if size > 0:
            data += _buffer(_out, size)[:]
    return data


def set_mtu(connection: SSL.Connection, mtu: int) -> None:
    """The datagram size OpenSSL fragments handshake messages to (pyOpenSSL's
    ``set_ciphertext_mtu``, without its frame)."""
    lib.SSL_set_mtu(connection._ssl, mtu)


def waiting(connection: SSL.Connection) -> int:
    """Bytes in ``connection``'s outgoing memory BIO."""
    return int(lib.BIO_get_mem_data(connection._from_ssl, ffi.NULL))


def listen(connection: SSL.Connection) -> int:
    """``DTLSv1_listen`` on the ClientHello fed in: 1 (its cookie verified: the
    connection goes on with the handshake), 0 (no valid cookie: a HelloVerifyRequest,
    or nothing, was written) or < 0 (fatal: ``reason()``)."""
    return int(lib.DTLSv1_listen(connection._ssl, _address))


def timeout(connection: SSL.Connection) -> Optional[float]:
    """Seconds until OpenSSL wants ``handle_timeout`` (a retransmission), or None."""
    if lib.Cryptography_DTLSv1_get_timeout(connection._ssl, _seconds, _micros):
        return _seconds[0] + _micros[0] / 1e6
    return None


def handle_timeout(connection: SSL.Connection) -> bool:
    """Retransmit what is due; False if OpenSSL failed (``reason()``)."""
    return lib.DTLSv1_handle_timeout(connection._ssl) >= 0


def shutdown(connection: SSL.Connection) -> bool:
    """Send close_notify; False if OpenSSL could not."""
    return lib.SSL_shutdown(connection._ssl) >= 0


def pending(connection: SSL.Connection) -> int:
    """Plaintext bytes OpenSSL holds of a record already read (``SSL_pending``)."""
    return int(lib.SSL_pending(connection._ssl))


def master_key(connection: SSL.Connection) -> bytes:
    """The session's master secret (b"" before one exists)."""
    session = lib.SSL_get_session(connection._ssl)
    if session == ffi.NULL:
        return b""
    size = lib.SSL_SESSION_get_master_key(session, _master, 256)
    return _buffer(_master, size)[:]


def session_reused(connection: SSL.Connection) -> bool:
    return bool(lib.SSL_session_reused(connection._ssl))


def cipher_name(connection: SSL.Connection) -> str:
    cipher = lib.SSL_get_current_cipher(connection._ssl)
    if cipher == ffi.NULL:
        return ""
    # OpenSSL's SSL_CIPHERs are its static table: their names are kept by address
    name = _cipher_names.get(cipher)
    if name is None:
        name = _cipher_names[cipher] = ffi.string(lib.SSL_CIPHER_get_name(cipher)).decode(
            "ascii")
    return name


_cipher_names: Dict[Any, str] = {}


def reason() -> str:
    """OpenSSL's words for what just failed (its error queue, emptied), as
    ``context.openssl_reason`` gives them for pyOpenSSL's ``SSL.Error``."""
    texts = []
    while True:
        code = lib.ERR_get_error()
        if not code:
            break
        text = lib.ERR_reason_error_string(code)
        texts.append(ffi.string(text).decode("ascii", "replace") if text != ffi.NULL
                     else "error %d" % code)
    return "; ".join(texts) or "unknown OpenSSL failure"


# Empty OpenSSL's (per-thread) error queue (see ``psk.clear_errors``): the C function
# itself. It clears every slot of the queue each time (about 1,200 instructions), so
# the per-datagram paths look first (``if queued(): clear_errors()``): ``ERR_peek_error``
# only reads the queue's ends, and the queue is empty but after a failure
clear_errors: Callable[[], None] = lib.ERR_clear_error if not MISSING else (lambda: None)
queued: Callable[[], int] = lib.ERR_peek_error if not MISSING else (lambda: 0)


class CookieCallbacks:
    """The context's cookie callbacks (``DTLSv1_listen`` and the handshake's first step
    call them) installed through the bindings: ``generate() -> bytes``,
    ``verify(cookie) -> bool``; neither is told the connection (the listener knows
    whose ClientHello it is listening to), which saves a look-up per call. While
    ``expected`` holds a cookie (one the listener checked itself, for the ClientHello
    OpenSSL is now given), the cookie is compared with it here and ``verify`` is not
    asked: OpenSSL asks twice per such ClientHello. An
    exception in either is handed to ``log.failure`` and counts as no cookie (it must
    not unwind through OpenSSL's C frames). Keep this object as long as the context (it
    holds the C callbacks)."""

    def __init__(self, context: SSL.Context, generate: Callable[[], bytes],
                 verify: Callable[[bytes], bool], log: Any):
        self.generate, self.verify, self.log = generate, verify, log
        self.expected = b""
        self._generate = ffi.callback("int (*)(SSL *, unsigned char *, unsigned int *)",
                                      self._on_generate)
        self._verify = ffi.callback("int (*)(SSL *, unsigned char *, unsigned int)",
                                    self._on_verify)
        lib.SSL_CTX_set_cookie_generate_cb(context._context, self._generate)
        lib.SSL_CTX_set_cookie_verify_cb(context._context, self._verify)

    def _on_generate(self, ssl: Any, out: Any, length: Any) -> int:
        try:
            cookie = self.generate()
            if not 0 < len(cookie) <= 255:  # DTLS1_COOKIE_LENGTH (CVE-2026-27459)
                return 0
            ffi.memmove(out, cookie, len(cookie))
            length[0] = len(cookie)
            return 1
        except Exception:
            self.log.failure("DTLS cookie generation failed")
            return 0

    def _on_verify(self, ssl: Any, cookie: Any, length: int) -> int:
        try:
            expected = self.expected
            if expected:
                return 1 if _same(_buffer(cookie, length)[:], expected) else 0
            return 1 if self.verify(_buffer(cookie, length)[:]) else 0
        except Exception:
            self.log.failure("DTLS cookie verification failed")
            return 0


class VerifyCallback:
    """The context's certificate verify callback installed through the bindings, in
    place of pyOpenSSL's (which wraps each certificate of the chain in an ``X509``
    object before calling Python): OpenSSL's verdict is returned unchanged, and a
    failure is handed to ``note(connection, None, error, depth, ok)`` (the signature
    pyOpenSSL's ``set_verify`` callbacks have, without the certificate). The verify
    mode stays the one the context was given. Keep this object as long as the context."""

    def __init__(self, context: SSL.Context,
                 note: Callable[[Any, Any, int, int, int], Any], log: Any):
        self.note, self.log = note, log
        self._callback = ffi.callback("int (*)(int, X509_STORE_CTX *)", self._on_verify)
        lib.SSL_CTX_set_verify(context._context, context.get_verify_mode(), self._callback)

    def _on_verify(self, ok: int, store: Any) -> int:
        if not ok:
            try:
                ssl = lib.X509_STORE_CTX_get_ex_data(
                    store, lib.SSL_get_ex_data_X509_STORE_CTX_idx())
                self.note(SSL.Connection._reverse_mapping.get(ssl), None,
                          lib.X509_STORE_CTX_get_error(store),
                          lib.X509_STORE_CTX_get_error_depth(store), ok)
            except Exception:
                self.log.failure("Noting a DTLS client certificate's failure failed")
        return ok
