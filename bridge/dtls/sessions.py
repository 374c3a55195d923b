"""The DTLS sessions of one port and their bounds, without I/O.

* ``SessionTable``: sessions by source address. Established sessions and half-open
  handshakes (cookie verified, not finished) are bounded apart: at most
  ``max_sessions`` established (past that a new handshake is refused), at most
  ``max_handshakes`` half-open in all (past that the oldest half-open one makes room
  for the new: a legitimate handshake takes a few round trips, a flood's wait for the
  deadline) and ``max_handshakes_per_address`` half-open from one host (past that, the
  host's new handshakes are refused). A handshake not finished within
  ``handshake_timeout`` is reaped (a wrong PSK with an AEAD suite fails silently: the
  bad Finished is discarded without an alert, and the client only waits), and an
  established session silent for ``idle_timeout`` is ended unless its user says it is
  in use (``due``'s ``in_use``: a device that only observes sends nothing while no
  notification comes). Both deadlines are kept in insertion order (one timeout
  each), so finding what is due costs nothing per session.
* ``HandshakeGuard``: handshakes per source address (a token bucket, after the
  cookie verified, so the address is real) and the negative cache of unknown PSK
  identities (OpenSSL asks again on every retransmitted flight).

Sessions are opaque objects with a hashable ``key`` and an ``address``; the table never
looks further inside.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from ..core.limits import RateLimiter

Address = Tuple[str, int]
SWEEP = 10.0  # s between sweeps of the guard's buckets and negative cache (the server's
# timer is never later than that)


class SessionTable:
    def __init__(self, max_sessions: int, handshake_timeout: float, idle_timeout: float,
                 max_handshakes: int = 1000, max_handshakes_per_address: int = 20):
        self.max_sessions = max_sessions
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self.by_address: Dict[Address, Any] = {}
        self._handshaking: "OrderedDict[Hashable, Tuple[float, Any]]" = OrderedDict()
        self._active: "OrderedDict[Hashable, Tuple[float, Any]]" = OrderedDict()
        self._half_open_by_host: Dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._handshaking) + len(self._active)

    @property
    def handshaking(self) -> int:
        return len(self._handshaking)

    @property
    def established(self) -> int:
        return len(self._active)

    def full(self) -> bool:
        """No room for another established session."""
        return len(self._active) >= self.max_sessions

    def handshakes_full(self) -> bool:
        """No room for another half-open handshake (the oldest must make room)."""
        return len(self._handshaking) >= self.max_handshakes

    def host_full(self, host: str) -> bool:
        """``host`` has as many half-open handshakes as it may."""
        return self._half_open_by_host.get(host, 0) >= self.max_handshakes_per_address

    def census(self, address: Address) -> Tuple[Optional[Any], int, int, int]:
        """What admission weighs, in one call: the session of ``address``, and how many
        sessions are established, half-open from its host, half-open in all."""
        return (self.by_address.get(address), len(self._active),
                self._half_open_by_host.get(address[0], 0), len(self._handshaking))

    def oldest_handshake(self) -> Optional[Any]:
        if not self._handshaking:
            return None
        return next(iter(self._handshaking.values()))[1]

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
        hosts = self._half_open_by_host
        hosts[address[0]] = hosts.get(address[0], 0) + 1

    def establish(self, session: Any, now: float) -> None:
        """The handshake finished: from now on the idle timeout applies."""
        if self._handshaking.pop(session.key, None) is not None:
            hosts, host = self._half_open_by_host, session.address[0]
            left = hosts[host] - 1
            if left:
                hosts[host] = left
            else:
                del hosts[host]
            self._active[session.key] = (now, session)

    def touch(self, session: Any, now: float) -> None:
        """The session was used (a record came from its peer)."""
        key = session.key
        if key in self._active:
            self._active[key] = (now, session)
            self._active.move_to_end(key)

    def remove(self, session: Any, address: Optional[Address] = None) -> None:
        address = address if address is not None else getattr(session, "address", None)
        if self._handshaking.pop(session.key, None) is not None and address is not None:
            self._unhost(address[0])
        self._active.pop(session.key, None)
        if address is not None and self.by_address.get(address) is session:
            del self.by_address[address]

    def _unhost(self, host: str) -> None:
        hosts = self._half_open_by_host
        left = hosts[host] - 1
        if left:
            hosts[host] = left
        else:
            del hosts[host]

    def due(self, now: float,
            in_use: Optional[Callable[[Any], bool]] = None) -> List[Tuple[Any, str]]:
        """Sessions to end now, with why: "handshake timeout" or "idle". An idle session
        ``in_use`` says is in use is kept, as if it had been used now."""
        out: List[Tuple[Any, str]] = []
        while self._handshaking:
            deadline, session = next(iter(self._handshaking.values()))
            if deadline > now:
                break
            out.append((session, "handshake timeout"))
            self.remove(session)
        limit = now - self.idle_timeout
        active = self._active
        while active:
            key, (seen, session) = next(iter(active.items()))
            if seen > limit:
                break
            if in_use is not None and in_use(session):
                active[key] = (now, session)
                active.move_to_end(key)
                continue
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
