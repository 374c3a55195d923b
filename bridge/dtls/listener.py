"""The cookie phase (RFC 6347 §4.2.1): no per-peer state before an address proves itself.

A ClientHello from an address without a session comes here. Without a valid cookie
(the first ClientHello of every handshake) it is answered by a HelloVerifyRequest built
here (``records.hello_verify_request``: the bytes OpenSSL's ``DTLSv1_listen`` would
write) around a 16-byte stateless cookie from ``cookies.CookieJar``, before any OpenSSL
object exists: the answer is smaller than the ClientHello (no amplification) and costs
one MAC. A ClientHello whose cookie verifies gets a fresh ``Connection`` that runs
``DTLSv1_listen`` on it (which sets up the handshake as the second ClientHello's, the
cookie callbacks answering from the check just made) and becomes the peer's session.
A ClientHello that ``records.client_hello`` could not read whole (fragmented, an odd
version...) is left to OpenSSL entirely: a listener ``Connection`` runs
``DTLSv1_listen``, whose HelloVerifyRequest goes out only if it is a handshake record
no bigger than 256 bytes. The cookie callbacks read the address (and the time) of the
ClientHello being listened to from here (pyOpenSSL and the bindings discard the address
``DTLSv1_listen`` reports).
"""

from __future__ import annotations

from typing import Optional, Tuple

from OpenSSL import SSL

from . import bindings, records
from .cookies import CookieJar

Address = Tuple[str, int]
MAX_HELLO_VERIFY = 256


# what ``listen`` heard, a plain tuple (one per ClientHello): the connection if the
# cookie verified (the session's, now), a HelloVerifyRequest to send back or b"", and
# why the ClientHello could not be read or ""
Heard = Tuple[Optional[SSL.Connection], bytes, str]


class Listener:
    def __init__(self, cookies: CookieJar, mtu: int):
        self.cookies = cookies
        self.mtu = mtu
        self.context: Optional[SSL.Context] = None
        self._from: Address = ("", 0)  # whose ClientHello is being listened to
        self._now = 0.0
        # the context's cookie callbacks (their ``expected``: the cookie of the
        # ClientHello listened to, when checked here)
        self.callbacks: Optional[bindings.CookieCallbacks] = None
        # the connection that listens to ClientHellos left to OpenSSL, kept while they
        # verify no cookie (a flood of odd ClientHellos costs no SSL_new each)
        self._spare: Optional[SSL.Connection] = None

    def cookie_generate(self) -> bytes:
        return self.cookies.make(self._from, self._now)

    def cookie_verify(self, cookie: bytes) -> bool:
        return self.cookies.check(self._from, cookie, self._now)

    def start(self, context: SSL.Context, callbacks: bindings.CookieCallbacks) -> None:
        """The context to listen with, and its cookie callbacks (built with this
        listener's ``cookie_generate`` and ``cookie_verify``)."""
        self.context = context
        self.callbacks = callbacks

    def listen(self, data: bytes, address: Address, hello: records.ClientHello,
               now: float) -> Heard:
        """A ClientHello (``hello``, as ``records.client_hello`` read ``data``) from
        ``address``."""
        callbacks = self.callbacks
        assert callbacks is not None, "start() first"
        self._from, self._now = address, now
        callbacks.expected = b""
        if hello.plain:
            cookie = hello.cookie
            if not cookie or not self.cookies.check(address, cookie, now):
                reply = records.hello_verify_request(hello, self.cookies.make(address, now))
                return None, reply, ""
            # what OpenSSL's callback is asked next, by DTLSv1_listen and again by the
            # handshake's first step, for this ClientHello
            callbacks.expected = cookie
        return self._openssl(data)

    def _openssl(self, data: bytes) -> Heard:
        """``DTLSv1_listen`` on a fresh connection (the session's, if the cookie
        verifies), told the MTU (``DTLSv1_listen`` puts it in the accept state)."""
        connection = self._spare
        if connection is None:  # (new_connection, inline)
            connection = SSL.Connection(self.context, None)
            bindings.set_mtu(connection, self.mtu)
        else:
            self._spare = None
        if bindings.queued():
            bindings.clear_errors()
        bindings.feed(connection, data)
        result = bindings.listen(connection)
        if result > 0:  # the cookie verified: the address is real
            return connection, b"", ""
        if result < 0:
            return None, b"", bindings.reason()
        self._spare = connection
        # no valid cookie: the HelloVerifyRequest (or nothing, for garbage, whose error
        # OpenSSL leaves queued)
        bindings.clear_errors()
        out = bindings.drain(connection)
        if out and records.content_type(out) == records.HANDSHAKE \
                and len(out) <= MAX_HELLO_VERIFY:
            return None, out, ""
        return None, b"", ""
