"""Observe notifications, sent on the next reactor turn in the order the core made them.

A peer of a reliable connection (``edge.stream.StreamPeer``) sends its own on its
connection; the others go through the UDP transport (plain or DTLS sessions).
On the next turn, so that a registration's response (sent when the request's
Deferred fires) always goes before its first notification.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ..core.actions import Notify
from ..logs import logger

log = logger("bridge")


class Notifications:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.transport: Optional[Any] = None  # the CoAP transport (BridgeCoap) while listening
        self._queue: List[Notify] = []
        self._call: Any = None

    def queue(self, notify: Notify) -> None:
        self._queue.append(notify)
        if self._call is None:
            self._call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        batch, self._queue = self._queue, []
        transport = self.transport
        if transport is None:
            return
        for notify in batch:
            remote = notify.remote
            # a reliable connection's peer (RFC 8323) sends on its connection
            target = remote if type(remote) is not tuple and hasattr(remote, "notify") \
                else None
            if target is not None:
                target.notify(notify.ref, notify.token, notify.code, notify.payload,
                              notify.observe, notify.observation, notify.block_size,
                              notify.content_format)
            else:
                transport.notify(notify.ref, remote, notify.token, notify.code,
                                 notify.payload, notify.observe, notify.observation,
                                 notify.block_size, notify.content_format)
            log.debug("Notified {device} (observe {observe})", device=notify.device,
                      observe=notify.observe)

    def stop(self) -> None:
        """No transport any more: what is queued is not sent."""
        self.transport = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queue = []
