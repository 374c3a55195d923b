"""Observe notifications, sent on the next reactor turn in the order the core made them.

On the next turn, so that a registration's response (sent when the request's
Deferred fires) always goes before its first notification. Each goes to the transport
of its peer, by the peer's type: a (host, port) tuple to plain CoAP's, a ``DtlsPeer`` to
CoAPs' (each attaches itself while it listens); a peer of a reliable connection
(``edge.stream.StreamPeer``) sends its own on its connection.

A notification the core withdraws (its PSM device fell asleep) is not sent if it still
waits here, and its fate, "withdrawn", goes to ``on_result`` on the turn it would have
gone; once sent, the datagram transport of its peer stops retransmitting it (and reports
the same fate); a reliable connection has nothing to withdraw (what it wrote is delivered).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..coap.exchange import WITHDRAWN
from ..core.actions import Notify, Withdraw
from ..logs import logger

log = logger("bridge")


class Notifications:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        # the type of a peer -> the transport that reaches it, while it listens
        self.transports: Dict[type, Any] = {}
        self._queue: List[Notify] = []
        self._withdrawn: List[int] = []  # taken out of the queue: their fate on the flush
        self._call: Any = None
        # hears (ref, "withdrawn") for a notification withdrawn before it was sent
        self.on_result: Callable[[int, str], None] = lambda ref, outcome: None

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
        withdrawn, self._withdrawn = self._withdrawn, []
        for ref in withdrawn:
            self.on_result(ref, WITHDRAWN)
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

    def withdraw(self, action: Withdraw) -> None:
        """The core takes notification ``action.ref`` back (its device fell asleep): not
        sent if it still waits here, else no more retransmissions of it by the datagram
        transport of its peer (see the module)."""
        queued = len(self._queue)
        self._queue = [notify for notify in self._queue if notify.ref != action.ref]
        if len(self._queue) != queued:
            self._withdrawn.append(action.ref)  # a flush is due: the queue had it
            return
        transport = self.transports.get(type(action.remote))
        if transport is not None:
            transport.withdraw(action.ref, action.remote)

    def stop(self) -> None:
        """No transport any more: what is queued is not sent."""
        self.transports.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queue = []
        self._withdrawn = []
