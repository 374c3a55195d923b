"""Observe notifications, sent on the next reactor turn in the order the core made them.

On the next turn, so that a registration's response (sent when the request's
Deferred fires) always goes before its first notification. Each goes to the transport
of its peer, by the peer's type (``transports.Transports``, which each transport service
joins while it runs): a (host, port) tuple to plain CoAP's, a ``DtlsPeer`` to CoAPs', a
peer of a reliable connection (``edge.stream.StreamPeer``) to the RFC 8323 hub, which
writes it on the peer's connection.

A notification the core withdraws (its PSM device fell asleep) is not sent if it still
waits here, and its fate, "withdrawn", goes to ``on_result`` on the turn it would have
gone; once sent, the datagram transport of its peer stops retransmitting it (and reports
the same fate); a reliable connection has nothing to withdraw (what it wrote is delivered).
"""

from __future__ import annotations

from typing import Any, Callable, List

from ..coap.exchange import WITHDRAWN
from ..core.actions import Notify, Withdraw
from ..logs import logger
from .transports import Transports

log = logger("bridge")


class Notifications:
    def __init__(self, reactor: Any, transports: Transports,
                 on_result: Callable[[int, str], None]):
        self.reactor = reactor
        self.transports = transports
        self._queue: List[Notify] = []
        self._withdrawn: List[int] = []  # taken out of the queue: their fate on the flush
        self._call: Any = None
        # hears (ref, "withdrawn") for a notification withdrawn before it was sent
        self.on_result = on_result

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
        senders = self.transports.senders()
        if not senders:
            return  # not listening (yet, or any more): nothing is sent
        for notify in batch:
            remote = notify.remote
            sender = senders.get(type(remote))
            if sender is None:
                continue  # its transport stopped listening
            sender.notify(notify.ref, remote, notify.token, notify.code, notify.payload,
                          notify.observe, notify.observation, notify.block_size,
                          notify.content_format)
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
        sender = self.transports.sender(type(action.remote))
        if sender is not None:
            sender.withdraw(action.ref, action.remote)

    def stop(self) -> None:
        """The transports stopped: what is queued is not sent."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queue = []
        self._withdrawn = []
