"""Who a resumed DTLS session belongs to (pitfall P4 of ../shared/spec/dtls-notes.md).

On resumption OpenSSL runs no PSK callback and keeps no verified chain, so the
credential of each full handshake is remembered under a hash of its master secret,
which only a resumption of that session shares (a full handshake never does). The
memory is bounded (``MAX_REMEMBERED``, OpenSSL's own session cache size: older entries
go first) and forgets the credentials the registry no longer has, so a resumption of
one of those is refused instead of going on anonymously.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Optional, Tuple

MAX_REMEMBERED = 20480  # credentials of resumable sessions (OpenSSL's cache size)

Remembered = Tuple[Any, Optional[bytes]]  # (credential, the PSK key it used)


class Resumption:
    def __init__(self, limit: int = MAX_REMEMBERED):
        self.limit = limit
        self._by_secret: "OrderedDict[bytes, Remembered]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_secret)

    def recall(self, master_key: Optional[bytes]) -> Tuple[bytes, Optional[Remembered]]:
        """The hash of a finished handshake's master secret (what ``remember`` keys on),
        and the credential of the full handshake that had it, or None."""
        secret = hashlib.blake2s(master_key or b"").digest()
        found = self._by_secret.get(secret)
        if found is not None:
            self._by_secret.move_to_end(secret)
        return secret, found

    def remember(self, secret: bytes, credential: Any, key: Optional[bytes]) -> None:
        remembered = self._by_secret
        remembered[secret] = (credential, key)
        while len(remembered) > self.limit:
            remembered.popitem(last=False)

    def forget(self, gone: Callable[[Any, Optional[bytes]], bool]) -> None:
        """Forget every entry ``gone(credential, key)`` names."""
        for secret in [s for s, (credential, key) in self._by_secret.items()
                       if gone(credential, key)]:
            del self._by_secret[secret]
