"""``Transports``: the transports running now, by the type of the peers each reaches.

Each transport service joins on start and leaves on stop (``bridge/service.py``,
``edge/reliable_service.py``): plain CoAP for (host, port) tuples, CoAPs for
``DtlsPeer``, the RFC 8323 listeners' hub for ``StreamPeer``. The notifications go to
the transport of their peer's type (``notifications.py``), the readiness probe asks
whether plain CoAP is there, and the metrics read the counters of those that are
(``metrics.py``). Nothing else holds a transport: a new one joins here and is reached.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional


class Joined(NamedTuple):
    transport: Any  # what the metrics read (BridgeCoap, DtlsTransport, Hub)
    sender: Any  # what sends a peer's notifications: notify(ref, peer, ...), withdraw


class Transports:
    def __init__(self) -> None:
        self._by_peer: Dict[type, Joined] = {}

    def join(self, peer_type: type, transport: Any, sender: Any = None) -> None:
        """``transport`` reaches the peers of ``peer_type`` from now on, its notifications
        through ``sender`` (the transport itself unless given)."""
        self._by_peer[peer_type] = Joined(transport, transport if sender is None else sender)

    def leave(self, peer_type: type) -> None:
        """The transport of ``peer_type`` stopped: its peers are reached no more."""
        self._by_peer.pop(peer_type, None)

    def get(self, peer_type: type) -> Optional[Any]:
        """The transport of the peers of ``peer_type``, while it runs."""
        joined = self._by_peer.get(peer_type)
        return None if joined is None else joined.transport

    def sender(self, peer_type: type) -> Optional[Any]:
        joined = self._by_peer.get(peer_type)
        return None if joined is None else joined.sender

    def senders(self) -> Dict[type, Any]:
        """Peer type -> its sender, for every transport running now."""
        return {peer_type: joined.sender for peer_type, joined in self._by_peer.items()}

    def __contains__(self, peer_type: type) -> bool:
        return peer_type in self._by_peer

    def __bool__(self) -> bool:
        return bool(self._by_peer)
