"""Observe notifications, sent on the next reactor turn in the order the core made them.

On the next turn, so that a registration's response (sent when the request's
Deferred fires) always goes before its first notification. Each goes to the transport
of its peer, by the peer's type: a (host, port) tuple to plain CoAP's, a ``DtlsPeer`` to
CoAPs' (each attaches itself while it listens); a peer of a reliable connection
(``edge.stream.StreamPeer``) sends its own on its connection.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..core.actions import Notify
from ..logs import logger

log = logger("bridge")


class Notifications:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        # the type of a peer -> the transport that reaches it, while it listens
        self.transports: Dict[type, Any] = {}
        self._queue: List[Notify] = []
        self._call: Any = None

    @property
    def transport(self) -> Optional[Any]:
        """Plain CoAP's transport (``BridgeCoap``), whose peers are (host, port) tuples."""
        return self.transports.get(tuple)

    @transport.setter
    def transport(self, transport: Optional[Any]) -> None:
        if transport is None:
            self.detach(tuple)
        else:
            self.attach(tuple, transport)

    def attach(self, peer_type: type, transport: Any) -> None:
        self.transports[peer_type] = transport

    def detach(self, peer_type: type) -> None:
        self.transports.pop(peer_type, None)

    def queue(self, notify: Notify) -> None:
        self._queue.append(notify)
        if self._call is None:
            self._call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        batch, self._queue = self._queue, []
        transports = self.transports
        if not transports:
            return  # not listening (yet, or any more): nothing is sent
        for notify in batch:
            remote = notify.remote
            transport = transports.get(type(remote))
            if transport is not None:
                transport.notify(notify.ref, remote, notify.token, notify.code,
                                 notify.payload, notify.observe, notify.observation,
                                 notify.block_size, notify.content_format)
            elif type(remote) is not tuple and hasattr(remote, "notify"):
                # a reliable connection's peer (RFC 8323) sends on its connection
                remote.notify(notify.ref, notify.token, notify.code, notify.payload,
                              notify.observe, notify.observation, notify.block_size,
                              notify.content_format)
            else:
                continue  # its transport stopped listening
            log.debug("Notified {device} (observe {observe})", device=notify.device,
                      observe=notify.observe)

    def stop(self) -> None:
        """No transport any more: what is queued is not sent."""
        self.transports.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queue = []
