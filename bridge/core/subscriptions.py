"""Observe as the device APIs use it: registering, cancelling and later blocks.

Attributes and RPC both hand their observers to ``Observers`` (observe.py, the relations
and their notification queues); this part is the one place that answers a registration
and hands back what a relation held when it ends (``requeue``: RPCs wait for the next
registration). It follows renames and forgets deleted devices for both.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set

from . import codes, routes
from .actions import Log, Reply, Request, Withdraw
from .observe import ACK, WITHDRAWN, Observers, Pending
from .parts import Action, Part, Shared

FEATURES = (routes.ATTRIBUTES, routes.RPC)  # the observable resources of a device


class Subscriptions(Part):
    def __init__(self, shared: Shared):
        super().__init__()
        self.observers = Observers(shared.config.coap.max_observers)
        # what a relation held when it ended or was replaced (set by the RPC part)
        self.requeue: Callable[[List[Pending], float], None] = lambda leftovers, now: None
        # feature -> called once a relation of a device is registered (RPC: its waiting RPCs)
        self.registered: Dict[str, Callable[[str, float], List[Action]]] = {}
        # a device acknowledged a notification (set by the facade: power saving hears it)
        self.acknowledged: Callable[[str, float], List[Action]] = lambda name, now: []
        self.stats = {"notifications_withdrawn": 0}

    def __len__(self) -> int:
        return len(self.observers)

    def register(self, request: Optional[Request], name: str, feature: str, code: int,
                 body: bytes, content_format: int, now: float) -> List[Action]:
        """Answer an observe registration with ``body`` (its first representation)."""
        assert request is not None
        observers = self.observers
        relation, leftovers = observers.register(
            name, feature, request.remote, request.token, request.observation,
            request.block2[1] if request.block2 is not None else codes.BLOCK_SIZE)
        self.requeue(leftovers, now)
        fmt = content_format if body else None
        if relation is None:  # full: answer without Observe (RFC 7641 §4.1)
            return [Reply(request.ref, code, body, fmt, reason="observer limit reached"),
                    Log("warn", "observer limit {limit} reached; {device} not registered",
                        {"limit": observers.max_relations, "device": name})]
        relation.sent(body)
        actions: List[Action] = [Reply(request.ref, code, body, fmt,
                                       observe=relation.next_observe(now))]
        hook = self.registered.get(feature)
        return actions + hook(name, now) if hook is not None else actions

    def restore(self, name: str, feature: str, remote: Any, token: bytes, observation: Any,
                block_size: int) -> bool:
        """Take over a relation a process before this one held (a restarted worker): as
        it was registered, with nothing queued. False when there is no room for it."""
        relation, _ = self.observers.register(name, feature, remote, token, observation,
                                              block_size)
        return relation is not None

    def deregister(self, request: Request, name: str, feature: str, now: float) -> None:
        """GET with Observe: 1 (only the registering endpoint and token end the relation)."""
        ended, leftovers = self.observers.deregister(name, feature, request.remote,
                                                     request.token)
        self.requeue(leftovers, now)

    def later_block(self, name: str, feature: str, request: Request,
                    content_format: int) -> Optional[Reply]:
        """A GET without Observe of a later block of the representation the device's relation
        was last sent in blocks (RFC 7959 §2.6): that representation, which the edge cuts
        into the block asked for. None for any other request."""
        if request.observe is not None or request.block2 is None or request.block2[0] == 0:
            return None
        relation = self.observers.get(name, feature)
        if relation is None or relation.last is None:
            return None
        return Reply(request.ref, codes.CONTENT, relation.last, content_format)

    def enqueue(self, name: str, feature: str, pending: Pending, now: float) -> List[Action]:
        return self.observers.enqueue(name, feature, pending, now)  # type: ignore[return-value]

    def observing(self) -> Set[str]:
        return {relation.device for relation in self.observers.relations.values()}

    def on_notified(self, ref: int, outcome: str, now: float) -> List[Action]:
        # an ACK says the device is awake, unless it is a late one of a notification
        # withdrawn (sent before the device slept: observe.py), whose ref is not in flight
        device = self.observers.device_of(ref) if outcome == ACK else None
        if outcome == WITHDRAWN and self.observers.device_of(ref) is not None:
            self.stats["notifications_withdrawn"] += 1
        notifies, ended, leftovers = self.observers.on_result(ref, outcome, now)
        actions: List[Action] = list(notifies)
        if device is not None:
            actions += self.acknowledged(device, now)
        for relation in ended:
            actions.append(Log("info", "observe of /{feature} by {device} ended ({outcome})",
                               {"feature": relation.feature, "device": relation.device,
                                "outcome": outcome}))
        self.requeue(leftovers, now)
        return actions

    def on_peer_gone(self, remote: Any, now: float) -> List[Action]:
        """``remote`` (a DTLS session) ended: its relations end as on a timeout."""
        ended, leftovers = self.observers.cancel_remote(remote)
        actions: List[Action] = [
            Log("info", "observe of /{feature} by {device} ended ({outcome})",
                {"feature": relation.feature, "device": relation.device,
                 "outcome": "session ended"}) for relation in ended]
        self.requeue(leftovers, now)
        return actions

    def wake(self, name: str, now: float) -> List[Action]:
        """``name`` woke (power saving): what its relations held goes."""
        return self.observers.resume(name, FEATURES, now)  # type: ignore[return-value]

    def sleep(self, name: str, now: float) -> List[Action]:
        """``name`` fell asleep (PSM): the transports are asked to stop retransmitting its
        CON notifications in flight (those they stop come back "withdrawn" and wait for it
        to wake)."""
        return [Withdraw(ref, remote)
                for ref, remote in self.observers.in_flight(name, FEATURES)]

    def rename(self, old: str, new: str) -> None:
        self.observers.rename(old, new)

    def forget(self, name: str) -> List[Action]:
        self.observers.cancel_device(name)
        return []
