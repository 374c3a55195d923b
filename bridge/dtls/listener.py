"""The cookie phase (RFC 6347 §4.2.1): no per-peer state before an address proves itself.

A ClientHello from an address without a session goes to one shared listener
``Connection`` running ``DTLSv1_listen``. Without a valid cookie OpenSSL answers with a
HelloVerifyRequest (a 16-byte stateless cookie from ``cookies.CookieJar``), which goes
out only if it is a handshake record no bigger than 256 bytes (never more than the
ClientHello: no amplification); with one, that listener becomes the peer's session and
a fresh listener is made. pyOpenSSL discards the address ``DTLSv1_listen`` reports, so
the cookie callbacks read the address (and the time) of the ClientHello being listened
to from here.
"""

from __future__ import annotations

from typing import Optional, Tuple

from OpenSSL import SSL

from . import psk, records
from .context import openssl_reason
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
        self._connection: Optional[SSL.Connection] = None
        self._from: Address = ("", 0)  # whose ClientHello is being listened to
        self._now = 0.0

    def cookie_generate(self, connection: SSL.Connection) -> bytes:
        return self.cookies.make(self._from, self._now)

    def cookie_verify(self, connection: SSL.Connection, cookie: bytes) -> bool:
        return self.cookies.check(self._from, cookie, self._now)

    def start(self, context: SSL.Context) -> None:
        """The context (built with this listener's cookie callbacks) to listen with."""
        self.context = context
        self._connection = self.new_connection()

    def new_connection(self) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_accept_state()
        connection.set_ciphertext_mtu(self.mtu)
        return connection

    def listen(self, data: bytes, address: Address, now: float) -> Heard:
        """A ClientHello (``records.client_hello`` read it) from ``address``."""
        listener = self._connection
        assert listener is not None, "start() first"
        self._from, self._now = address, now
        try:
            listener.bio_write(data)
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            # no valid cookie: the HelloVerifyRequest (or nothing, for garbage, whose
            # error OpenSSL leaves queued)
            psk.clear_errors()
            size = psk.waiting(listener)
            if not size:
                return None, b"", ""
            out = listener.bio_read(size)
            if records.content_type(out) == records.HANDSHAKE and len(out) <= MAX_HELLO_VERIFY:
                return None, out, ""
            return None, b"", ""
        except SSL.Error as exc:
            psk.clear_errors()
            self._connection = self.new_connection()
            return None, b"", openssl_reason(exc)
        # the cookie verified: the address is real
        self._connection = self.new_connection()
        return listener, b"", ""
