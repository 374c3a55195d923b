"""W10: message deduplication (RFC 7252 §4.5) that stays cheap with millions of entries."""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

Slot = Tuple[str, int]  # a deduplication key and its shard


class Deduplicator:
    """W10: remembers (mid, peer) of recent CON/NON requests and the encoded first response.

    Entries live between ``lifetime`` and ``lifetime + bucket`` seconds; one
    ``sweep()`` per bucket interval drops whole buckets.

    A busy server holds millions of entries (EXCHANGE_LIFETIME is 247 s: three
    million at 12,000 requests/s), so:

    * they are kept out of the garbage collector's sight: keys are strings,
      values bytes, and a closed bucket is a tuple of strings and the bytes of
      their shards, none of which the collector tracks (tuple keys made every
      full collection walk all of them);
    * they are spread over ``SHARDS`` dicts, chosen by the key's hash (one byte
      per entry in a closed bucket says which): one dict of
      millions of keys, with keys coming and going, now and then rebuilds
      itself in one go, and that stopped everything for half a second.
    """

    # 16: the rebuild of one shard of three million entries stops the reactor for
    # 30 ms, not 500; shards cost PyPy (16: 15 % of the engine's rate, 256: 25 %)
    SHARDS = 16

    def __init__(self, lifetime: float, bucket: float = 0.25):
        self.lifetime = lifetime
        self.bucket = bucket
        self._shards: List[Dict[str, Optional[bytes]]] = [{} for _ in range(self.SHARDS)]
        self._open_keys: List[str] = []  # the newest bucket
        self._open_shards = bytearray()
        self._opened = float("-inf")  # when the newest bucket started
        self._buckets: Deque[Tuple[float, Tuple[str, ...], bytes]] = deque()  # closed ones

    @staticmethod
    def slot(mid: int, peer: Any) -> Slot:
        """The key of message ``mid`` from ``peer``: an address pair, or an object with a
        ``key`` string (a DTLS session)."""
        if type(peer) is tuple:
            key = "%s %d %d" % (peer[0], peer[1], mid)
        else:
            key = "%s %d" % (peer.key, mid)
        return key, hash(key) & 0x0F  # str hashes are cached: the dict reuses it

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def responses(self) -> List[Optional[bytes]]:
        return [data for shard in self._shards for data in shard.values()]

    def seen(self, slot: Slot, now: float) -> bool:
        """True for a duplicate; otherwise remember ``slot`` and return False."""
        key, index = slot
        shard = self._shards[index]
        if key in shard:
            return True
        shard[key] = None
        if self._opened + self.bucket <= now:
            self._close()
            self._opened = now
        self._open_keys.append(key)
        self._open_shards.append(index)
        return False

    def response(self, slot: Slot) -> Optional[bytes]:
        return self._shards[slot[1]].get(slot[0])

    def remember_response(self, slot: Slot, data: bytes) -> None:
        shard = self._shards[slot[1]]
        if shard.get(slot[0], data) is None:
            shard[slot[0]] = data

    def sweep(self, now: float) -> None:
        horizon = now - self.lifetime
        if self._opened + self.bucket <= horizon:
            self._close()
        shards = self._shards
        while self._buckets and self._buckets[0][0] + self.bucket <= horizon:
            _, keys, indexes = self._buckets.popleft()
            for key, index in zip(keys, indexes):
                shards[index].pop(key, None)

    def _close(self) -> None:
        if self._open_keys:
            self._buckets.append((self._opened, tuple(self._open_keys),
                                  bytes(self._open_shards)))
            self._open_keys = []
            self._open_shards = bytearray()
