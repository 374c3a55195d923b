"""Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).

The cookie is a MAC of the peer's address and port under a secret that is replaced
every ``rotate`` seconds: BLAKE2s in its keyed (MAC) mode, RFC 7693, with a
``SIZE``-byte output, which Python computes itself (HMAC-SHA256 through ``hashlib``
and OpenSSL 3 took about 20,000 instructions a cookie, bench/dtlsprofile.py); the
previous secret is still accepted, so a cookie handed out just before a rotation
verifies. No state per peer: a flood of ClientHellos from spoofed addresses costs one
MAC each and leaves nothing behind. 16 bytes stays far below the 255-byte limit that
pyOpenSSL before 26 did not check (CVE-2026-27459).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Tuple

SIZE = 16
SECRET = 16


class CookieJar:
    def __init__(self, random_bytes: Callable[[int], bytes], now: float, rotate: float = 60.0):
        self.random_bytes = random_bytes
        self.rotate = rotate
        self._current = random_bytes(SECRET)
        self._previous = self._current
        self._rotated = now

    def _turn(self, now: float) -> None:
        if now - self._rotated >= self.rotate:
            # two periods or more since: the old secret is no use any more either
            stale = now - self._rotated >= 2 * self.rotate
            self._previous = self.random_bytes(SECRET) if stale else self._current
            self._current = self.random_bytes(SECRET)
            self._rotated = now

    def make(self, address: Tuple[str, int], now: float) -> bytes:
        if now - self._rotated >= self.rotate:
            self._turn(now)
        # the MAC of the address (written out here and in ``check``: a call less each)
        return _blake2s(("%s|%d" % address).encode("ascii", "replace"), digest_size=SIZE,
                        key=self._current).digest()

    def check(self, address: Tuple[str, int], cookie: bytes, now: float) -> bool:
        if now - self._rotated >= self.rotate:
            self._turn(now)
        text = ("%s|%d" % address).encode("ascii", "replace")
        return (_same(cookie, _blake2s(text, digest_size=SIZE, key=self._current).digest())
                or _same(cookie, _blake2s(text, digest_size=SIZE,
                                          key=self._previous).digest()))


_blake2s, _same = hashlib.blake2s, hmac.compare_digest
