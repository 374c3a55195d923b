"""Which handshakes may start once their cookie verified (the address is real then).

In this order: a new address past ``dtls.max_sessions`` established sessions is
refused (there would be no room for it to finish); an address with
``dtls.max_handshakes_per_address`` half-open handshakes already is refused (it is the
one flooding); past the address's ``handshake_rate`` it is refused; the session its
address had is replaced (a rebooted device, RFC 6347 §4.2.8); and past
``dtls.max_handshakes`` half-open handshakes in all, the oldest makes room (a device's
own handshake takes a few round trips; a flood's lingers to the deadline). Each refusal
is counted, logged at debug level, and the bounds' at info level at most once a minute
per kind (a flood must not flood the log).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .sessions import HandshakeGuard, SessionTable

Address = Tuple[str, int]
_NOTHING: Sequence[Tuple[Any, str]] = ()
NOTE_EVERY = 60.0  # s between info lines about one kind of refusal

_NOTES = {
    "refused_full": "DTLS handshake from {peer} refused: {count:plural:session} "
                    "(dtls.max_sessions; {refused} refused so far)",
    "refused_address": "DTLS handshake from {peer} refused: {count} in progress from its "
                       "address (dtls.max_handshakes_per_address; {refused} refused so far)",
    "handshakes_evicted": "DTLS handshake from {peer} dropped for a newer one: {count} in "
                          "progress (dtls.max_handshakes; {refused} dropped so far)",
}


_BOUNDS = {"refused_full": "dtls.max_sessions",
           "refused_address": "dtls.max_handshakes_per_address"}


class Admission:
    def __init__(self, table: SessionTable, guard: HandshakeGuard, stats: Dict[str, int],
                 log: Any):
        self.table = table
        self.guard = guard
        self.stats = stats  # the server's: refused_*, replaced, handshakes_evicted
        self.log = log
        self._noted: Dict[str, float] = {}  # kind -> when last logged at info

    def admit(self, address: Address, now: float) -> Optional[Sequence[Tuple[Any, str]]]:
        """None if the handshake from ``address`` is refused; else the sessions to end
        quietly first, each with why ("replaced", "evicted")."""
        table, stats = self.table, self.stats
        old, established, of_host, half_open = table.census(address)
        if old is None and established >= table.max_sessions:
            return self._refuse("refused_full", now, address, established)
        if (old is None or old.established) and \
                of_host >= table.max_handshakes_per_address:
            return self._refuse("refused_address", now, address, of_host)
        if not self.guard.allow(address[0], now):
            stats["refused_rate"] += 1
            self.log.debug("DTLS handshake from {peer} refused: dtls.handshake_rate",
                           peer="%s:%d" % address)
            return None
        if old is None and half_open < table.max_handshakes:
            return _NOTHING  # the common case
        ending: List[Tuple[Any, str]] = []
        if old is not None:
            stats["replaced"] += 1
            self.log.debug("New DTLS handshake from {peer} replaces its session",
                           peer=str(old))
            ending.append((old, "replaced"))
            if not old.established:
                half_open -= 1
        if half_open >= table.max_handshakes:
            oldest = table.oldest_handshake()
            if oldest is old:  # it is going anyway; the next oldest makes room
                oldest = table.sessions()[1] if half_open > 0 else None
            if oldest is not None:
                stats["handshakes_evicted"] += 1
                self._note("handshakes_evicted", now, str(oldest), table.handshaking)
                ending.append((oldest, "evicted"))
        return ending

    def _refuse(self, kind: str, now: float, address: Address, count: int) -> None:
        self.stats[kind] += 1
        peer = "%s:%d" % address
        self.log.debug("DTLS handshake from {peer} refused: {bound}", peer=peer,
                       bound=_BOUNDS[kind])
        self._note(kind, now, peer, count)
        return None

    def _note(self, kind: str, now: float, peer: str, count: int) -> None:
        if now >= self._noted.get(kind, float("-inf")) + NOTE_EVERY:
            self._noted[kind] = now
            self.log.info(_NOTES[kind], peer=peer, count=count, refused=self.stats[kind])
