"""Requests in progress per source: a bound per source endpoint and one per address."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..core.parts import address

BUSY_PEER = b"too many requests in progress from this address and port"
BUSY_ADDRESS = b"too many requests in progress from this address"


class PendingAdmission:
    """At most ``per_peer`` requests of one source endpoint (address and port: one
    device) and ``per_address`` of one address (the devices behind a carrier NAT) are
    processed at once (``limits.max_pending_per_peer`` and ``max_pending_per_address``);
    a request beyond them is refused 5.03 with ``take``'s text. A DTLS session is a
    peer of its own, counted under its ``address``'s host."""

    def __init__(self, per_peer: int, per_address: int):
        self.per_peer = per_peer
        self.per_address = per_address
        self.by_peer: Dict[Any, int] = {}  # (address, port) -> requests in progress
        self.by_address: Dict[Any, int] = {}  # address -> requests in progress

    def take(self, peer: Any) -> Optional[bytes]:
        """Why a request from ``peer`` is refused now; or None, and the request is counted
        as in progress until ``release``."""
        by_peer, by_address = self.by_peer, self.by_address
        in_progress = by_peer.get(peer, 0)
        if in_progress >= self.per_peer:
            return BUSY_PEER
        host = peer[0] if type(peer) is tuple else address(peer)  # the hot path: a tuple
        at_address = by_address.get(host, 0)
        if at_address >= self.per_address:
            return BUSY_ADDRESS
        by_peer[peer] = in_progress + 1
        by_address[host] = at_address + 1
        return None

    def release(self, peer: Any) -> None:
        by_peer, by_address = self.by_peer, self.by_address
        left = by_peer[peer] - 1
        if left:
            by_peer[peer] = left
        else:
            del by_peer[peer]
        host = peer[0] if type(peer) is tuple else address(peer)
        left = by_address[host] - 1
        if left:
            by_address[host] = left
        else:
            del by_address[host]
