"""The DTLS sessions of one port and their bounds, without I/O.

* ``SessionTable``: sessions by source address; at most ``max_sessions`` (past that a
  new handshake is refused); a handshake not finished within ``handshake_timeout``
  is reaped (a wrong PSK with an AEAD suite fails silently: the bad Finished is
  discarded without an alert, and the client only waits), and an established
  session silent for ``idle_timeout`` is ended. Both deadlines are kept in insertion
  order (one timeout each), so finding what is due costs nothing per session.
* ``HandshakeGuard``: handshakes per source address (a token bucket, after the
  cookie verified, so the address is real) and the negative cache of unknown PSK
  identities (OpenSSL asks again on every retransmitted flight).

Sessions are opaque objects with a hashable ``key``; the table never looks inside.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Hashable, List, Optional, Tuple

from ..core.limits import RateLimiter

Address = Tuple[str, int]


class SessionTable:
    def __init__(self, max_sessions: int, handshake_timeout: float, idle_timeout: float):
        self.max_sessions = max_sessions
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.by_address: Dict[Address, Any] = {}
        self._handshaking: "OrderedDict[Hashable, Tuple[float, Any]]" = OrderedDict()
        self._active: "OrderedDict[Hashable, Tuple[float, Any]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._handshaking) + len(self._active)

    @property
    def handshaking(self) -> int:
        return len(self._handshaking)

    @property
    def established(self) -> int:
        return len(self._active)

    def full(self) -> bool:
        return len(self) >= self.max_sessions

    def get(self, address: Address) -> Optional[Any]:
        return self.by_address.get(address)

    def sessions(self) -> List[Any]:
        return [session for _, session in self._handshaking.values()] + \
            [session for _, session in self._active.values()]

    def add(self, address: Address, session: Any, now: float) -> None:
        """A handshake began (its cookie verified); it replaces any session of ``address``
        (which the caller has ended)."""
        old = self.by_address.get(address)
        if old is not None:
            self.remove(old, address)
        self.by_address[address] = session
        self._handshaking[session.key] = (now + self.handshake_timeout, session)

    def establish(self, session: Any, now: float) -> None:
        """The handshake finished: from now on the idle timeout applies."""
        if self._handshaking.pop(session.key, None) is not None:
            self._active[session.key] = (now, session)

    def touch(self, session: Any, now: float) -> None:
        """The session was used (a record came or went)."""
        key = session.key
        if key in self._active:
            self._active[key] = (now, session)
            self._active.move_to_end(key)

    def remove(self, session: Any, address: Optional[Address] = None) -> None:
        self._handshaking.pop(session.key, None)
        self._active.pop(session.key, None)
        address = address if address is not None else getattr(session, "address", None)
        if address is not None and self.by_address.get(address) is session:
            del self.by_address[address]

    def due(self, now: float) -> List[Tuple[Any, str]]:
        """Sessions to end now, with why: "handshake timeout" or "idle"."""
        out: List[Tuple[Any, str]] = []
        while self._handshaking:
            deadline, session = next(iter(self._handshaking.values()))
            if deadline > now:
                break
            out.append((session, "handshake timeout"))
            self.remove(session)
        limit = now - self.idle_timeout
        while self._active:
            seen, session = next(iter(self._active.values()))
            if seen > limit:
                break
            out.append((session, "idle"))
            self.remove(session)
        return out

    def next_due(self) -> Optional[float]:
        due = None
        if self._handshaking:
            due = next(iter(self._handshaking.values()))[0]
        if self._active:
            idle = next(iter(self._active.values()))[0] + self.idle_timeout
            due = idle if due is None else min(due, idle)
        return due


class HandshakeGuard:
    """Handshakes per source address, and PSK identities known to be unknown."""

    def __init__(self, rate: float, burst: float, negative_ttl: float = 30.0,
                 max_negative: int = 10_000):
        self.rate = RateLimiter(rate, burst)
        self.negative_ttl = negative_ttl
        self.max_negative = max_negative
        self._unknown: "OrderedDict[str, float]" = OrderedDict()  # identity -> expiry

    def allow(self, host: str, now: float) -> bool:
        """A handshake from ``host`` may start (it takes one token)."""
        return self.rate.allow(host, now) is None

    def known_unknown(self, identity: str, now: float) -> bool:
        expiry = self._unknown.get(identity)
        if expiry is None:
            return False
        if expiry <= now:
            del self._unknown[identity]
            return False
        return True

    def unknown(self, identity: str, now: float) -> None:
        self._unknown.pop(identity, None)
        self._unknown[identity] = now + self.negative_ttl
        while len(self._unknown) > self.max_negative:
            self._unknown.popitem(last=False)

    def forget(self) -> None:
        """The registry changed: an identity unknown before may be known now."""
        self._unknown.clear()

    def sweep(self, now: float) -> None:
        self.rate.sweep(now)
        while self._unknown:
            identity, expiry = next(iter(self._unknown.items()))
            if expiry > now:
                break
            del self._unknown[identity]
