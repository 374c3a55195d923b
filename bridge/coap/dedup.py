"""W10: message deduplication (RFC 7252 §4.5) that stays cheap with millions of entries."""

from __future__ import annotations

from array import array
from collections import deque
from typing import Any, Deque, Dict, Hashable, List, Optional, Tuple

Slot = Tuple[int, int]  # a deduplication key and its shard


class Deduplicator:
    """W10: remembers (mid, peer) of recent CON/NON requests and the encoded first response.

    Entries live between ``lifetime`` and ``lifetime + bucket`` seconds; one
    ``sweep()`` per bucket interval drops whole buckets.

    A busy server holds millions of entries (EXCHANGE_LIFETIME is 247 s: three
    million at 12,000 requests/s), so:

    * they are kept out of the garbage collectors' sight: a key is an integer, the
      peer's number (below) and the Message ID, a value the bytes of the response or
      None, and a closed bucket is the bytes of its keys and of their shards;
      CPython's collector tracks none of these (tuple keys made every full collection
      walk all of them; an array is a container to it, its bytes are
      not), and PyPy stores the integers unboxed: no object per key for its collector
      to copy out of the nursery and mark (string keys cost PyPy a tenth of its
      instructions per uplink);
    * they are spread over ``SHARDS`` dicts (one byte per entry in a closed bucket
      says which): one dict of millions of keys, with keys coming and going, now and
      then rebuilds itself in one go, and that stopped everything for half a second.

    A peer (an address pair, or a DTLS session's ``key``) gets a number the first time
    it is seen, kept while it is seen at least once every ``lifetime + bucket`` seconds:
    the numbers are in two generations, swapped that often, and a peer not seen in a
    whole generation is forgotten (every entry under its number has expired by then;
    seen again, it gets a new number). Numbers are never reused.
    """

    # 16: the rebuild of one shard of three million entries stops the reactor for
    # 30 ms, not 500; shards cost PyPy (16: 15 % of the engine's rate, 256: 25 %)
    SHARDS = 16

    def __init__(self, lifetime: float, bucket: float = 0.25):
        self.lifetime = lifetime
        self.bucket = bucket
        self._shards: List[Dict[int, Optional[bytes]]] = [{} for _ in range(self.SHARDS)]
        self._open_keys = array("q")  # the newest bucket
        self._open_shards = bytearray()
        self._opened = float("-inf")  # when the newest bucket started
        # closed ones: when each opened, its keys (int64 in native order) and their shards
        self._buckets: Deque[Tuple[float, bytes, bytes]] = deque()
        self._peers: Dict[Hashable, int] = {}  # peer -> its number, this generation
        self._older_peers: Dict[Hashable, int] = {}  # the generation before
        self._next_peer = 0
        self._generation_ends = float("-inf")

    def slot(self, mid: int, peer: Any) -> Slot:
        """The key of message ``mid`` from ``peer``: an address pair, or an object with a
        ``key`` (a DTLS session)."""
        name = peer if type(peer) is tuple else peer.key
        number = self._peers.get(name)
        if number is None:
            number = self._number(name)
        # the shard: the Message ID's low bits and the peer's number, mixed (Fibonacci
        # hashing), so that neither many peers' first mid nor one peer's run crowds one
        return (number << 16) | mid, (mid ^ ((number * 0x9E3779B1) >> 16)) & 0x0F

    def _number(self, name: Hashable) -> int:
        number = self._older_peers.pop(name, None)
        if number is None:
            number = self._next_peer
            self._next_peer += 1
        self._peers[name] = number
        return number

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
            for key, index in zip(memoryview(keys).cast("q"), indexes):
                shards[index].pop(key, None)
        if now >= self._generation_ends:  # peers not seen for a generation are forgotten
            self._older_peers, self._peers = self._peers, {}
            self._generation_ends = now + self.lifetime + self.bucket

    def _close(self) -> None:
        if self._open_keys:
            self._buckets.append((self._opened, self._open_keys.tobytes(),
                                  bytes(self._open_shards)))
            self._open_keys = array("q")
            self._open_shards = bytearray()
