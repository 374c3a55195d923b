"""Observe relations (RFC 7641) per device and feature, with ordered notification queues.

One relation per (device, feature) — ``attributes`` or ``rpc`` — as on
ThingsBoard; a new registration of the same device (from a new address or
port after NAT rebinding, or with a new token) replaces the old one.

Notifications to one relation go out in order, one at a time: the next goes when
the transport reports the fate of the one before (``on_result``: ``ack`` for an
acknowledged CON, ``delivered`` for a NON sent or a notification written to a
reliable connection). Whether a notification goes CON or NON is the transport's
choice (bridge/coap/datagram.py, RFC 7641 §4.5): the relation keeps the transport's
``observation`` state from its registration and hands it back with each ``Notify``.
Nothing waiting is replaced or dropped, except an item whose ``expires`` has
passed (a server RPC past ``platform.rpc_queue_ttl``): it is never sent, and
goes to ``expired`` for the caller to count. An RST cancels the relation (also one
to a notification reported delivered before); a CON notification that is never
acknowledged cancels every relation of that peer (the device is gone, or its NAT
binding is). Items still queued or in flight when a relation ends are handed back
to the caller (RPCs are kept for the next registration).

A ``gate`` (the power-saving part, power.py) may hold a device's notifications while it
sleeps: a queue goes on only when ``gate.may_send`` says so (``resume`` once the device
wakes); for a CON notification in flight when a PSM device falls asleep the transport is
asked to stop retransmitting it (``withdraw`` names them); if it did, its fate is
``withdrawn`` and it is taken back, first in its queue, to go again when the device wakes
(over a reliable connection nothing is withdrawn: what was written is delivered). An ACK
of a withdrawn notification that comes after all (it was on its way) takes it out of its
queue again: the device heard it, and does not get it twice. One that
times out while its device sleeps (``gate.asleep``) waits in the same way, and the
device's relations stay.

Whoever keeps relations across a restart (``bridge/glue/relations.py``) hears each
relation that began (``changed(key, relation)``) and each that ended
(``changed(key, None)``): at registration, deregistration, replacement, rename and end,
never per notification.

Observe numbers (RFC 7641 §4.4) come from the time, per relation: the number of
milliseconds (``OBSERVE_RATE`` per second) modulo 2**24, or the relation's last number
plus one when that is newer (several notifications in one millisecond). A process that
takes a relation over from one that died (restored relations, ``restore``) thus sends
numbers newer than the dead one's, without knowing them: a client that checks freshness
(aiocoap does, by §3.4) would otherwise drop every notification for 128 s. Within
2**23 ms (2.3 hours) the numbers of one relation stay in the "newer" half; past that
the 128-second rule makes any number fresh.

A representation longer than one block (``codes.BLOCK_SIZE``, or the smaller
block the device asked for when it registered) goes out as its first block
(RFC 7959 §2.6); the relation keeps the latest such one (``last``), so that
the device's GETs of the later blocks get the same representation.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Hashable, Iterator, List, Optional, Tuple

from . import codes
from .actions import Notify

ACK, DELIVERED, RESET, TIMEOUT = "ack", "delivered", "reset", "timeout"
WITHDRAWN = "withdrawn"  # the transport stopped retransmitting it at our asking: unheard
OBSERVE_MODULUS = 1 << 24
OBSERVE_HALF = 1 << 23
OBSERVE_RATE = 1000  # Observe numbers per second of time (milliseconds): see the docstring
RECENT = 4096  # delivered notifications remembered, so that an RST to one still counts
_EMPTY: Deque[Any] = deque(maxlen=0)  # shared by relations with nothing queued


@dataclass
class Pending:
    """A notification waiting for its turn. ``item`` is returned if the relation ends first."""

    payload: bytes
    code: int = codes.CONTENT
    item: Any = None
    expires: Optional[float] = None  # not sent from then on (see ``Observers.expired``)
    content_format: int = codes.APPLICATION_JSON  # of the payload (its device's format)


class Relation:
    """One observer. Slots and a shared empty queue keep it small: there may be 100,000."""

    __slots__ = ("device", "feature", "remote", "token", "observation", "queue", "in_flight",
                 "block_size", "last", "observe")

    def __init__(self, device: str, feature: str, remote: Hashable, token: bytes,
                 observation: Any, block_size: int = codes.BLOCK_SIZE):
        self.device = device
        self.feature = feature
        self.remote = remote
        self.token = token
        self.observation = observation  # the transport's, from the registration (opaque)
        self.queue: Deque[Pending] = _EMPTY  # replaced by a real deque on first use
        self.in_flight: Optional[Tuple[int, Pending]] = None
        self.block_size = block_size
        self.last: Optional[bytes] = None
        self.observe: Optional[int] = None  # the last Observe number it was sent

    def next_observe(self, now: float) -> int:
        """The Observe number of its next response or notification (see the module
        docstring): the time's, or the last one plus one when that is newer."""
        number = int(now * OBSERVE_RATE) % OBSERVE_MODULUS
        last = self.observe
        if last is not None and not 0 < (number - last) % OBSERVE_MODULUS < OBSERVE_HALF:
            number = (last + 1) % OBSERVE_MODULUS
        self.observe = number
        return number

    def sent(self, body: bytes) -> None:
        """``body`` went to the observer: kept while it is longer than one block."""
        self.last = body if len(body) > self.block_size else None


class Relations:
    """(device, feature) -> Relation, as a dict would map them, held as one dict per
    feature keyed by the device's name (the relation's own string): a key tuple per
    relation, 56 bytes of 100,000 observers' each, is not kept."""

    __slots__ = ("by_feature",)

    def __init__(self) -> None:
        self.by_feature: Dict[str, Dict[str, Relation]] = {}

    def __len__(self) -> int:
        return sum(map(len, self.by_feature.values()))

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        for feature, relations in list(self.by_feature.items()):
            for device in list(relations):
                yield device, feature

    def __contains__(self, key: Tuple[str, str]) -> bool:
        relations = self.by_feature.get(key[1])
        return relations is not None and key[0] in relations

    def __getitem__(self, key: Tuple[str, str]) -> Relation:
        return self.by_feature[key[1]][key[0]]

    def __setitem__(self, key: Tuple[str, str], relation: Relation) -> None:
        relations = self.by_feature.get(key[1])
        if relations is None:
            relations = self.by_feature[key[1]] = {}
        relations[key[0]] = relation

    def get(self, key: Tuple[str, str]) -> Optional[Relation]:
        relations = self.by_feature.get(key[1])
        return relations.get(key[0]) if relations is not None else None

    def pop(self, key: Tuple[str, str]) -> Relation:
        return self.by_feature[key[1]].pop(key[0])

    def values(self) -> List[Relation]:
        return [relation for relations in self.by_feature.values()
                for relation in relations.values()]


class Observers:
    def __init__(self, max_relations: int):
        self.max_relations = max_relations
        self.relations = Relations()
        # remote -> its relation, or a list of them when it has several: a peer that is
        # gone ends its own in O(its), for about 30 bytes per relation
        self._by_remote: Dict[Hashable, Any] = {}
        self._in_flight: Dict[int, Tuple[str, str]] = {}
        # notifications reported delivered, so that an RST to one still cancels its relation
        self._recent: "OrderedDict[int, Tuple[str, str, bytes]]" = OrderedDict()
        # notifications withdrawn (power saving), waiting again: an ACK of one that comes
        # after all takes it out of its queue (ref -> device, feature, token, the item)
        self._withdrawn: "OrderedDict[int, Tuple[str, str, bytes, Pending]]" = OrderedDict()
        self._next_ref = 0
        self.expired: List[Pending] = []  # skipped as expired; the caller takes them
        self.gate: Any = None  # may_send(device, now), asleep(device, now), hold(device)
        # hears (key, relation) when a relation begins, (key, None) when it ends
        self.changed: Callable[[Tuple[str, str], Optional[Relation]], None] = \
            lambda key, relation: None

    def __len__(self) -> int:
        return len(self.relations)

    def get(self, device: str, feature: str) -> Optional[Relation]:
        return self.relations.get((device, feature))

    def register(self, device: str, feature: str, remote: Hashable, token: bytes,
                 observation: Any, block_size: int = codes.BLOCK_SIZE
                 ) -> Tuple[Optional[Relation], List[Pending]]:
        """Add or replace the relation. Returns (relation or None when full, items of the one replaced)."""
        key = (device, feature)
        old = self.relations.get(key)
        if old is None and len(self.relations) >= self.max_relations:
            return None, []
        leftovers = self._drop(key) if old is not None else []
        relation = Relation(device, feature, remote, token, observation,
                            min(block_size, codes.BLOCK_SIZE))
        if old is not None:  # its numbers go on from the old one's
            relation.observe = old.observe
        self.relations[key] = relation
        self._index(remote, relation)
        self.changed(key, relation)
        return relation, leftovers

    def deregister(self, device: str, feature: str, remote: Hashable,
                   token: bytes) -> Tuple[bool, List[Pending]]:
        """GET with Observe=1: only the registering peer and token can end the relation."""
        key = (device, feature)
        relation = self.relations.get(key)
        if relation is None or relation.remote != remote or relation.token != token:
            return False, []
        return True, self._drop(key)

    def cancel_device(self, device: str) -> List[Pending]:
        leftovers: List[Pending] = []
        for key in [k for k in self.relations if k[0] == device]:
            leftovers += self._drop(key)
        return leftovers

    def rename(self, old: str, new: str) -> None:
        for key in [k for k in self.relations if k[0] == old]:
            relation = self.relations.pop(key)
            relation.device = new
            target = (new, key[1])
            replaced = self.relations.get(target)
            if replaced is not None:  # no longer one of its remote's
                self._unindex(replaced.remote, replaced)
            self.relations[target] = relation  # still its remote's (the same object)
            self.changed(key, None)
            self.changed(target, relation)
        for ref, key in list(self._in_flight.items()):
            if key[0] == old:
                self._in_flight[ref] = (new, key[1])
        for ref, entry in list(self._recent.items()):
            if entry[0] == old:
                self._recent[ref] = (new, entry[1], entry[2])
        for ref, withdrawn in list(self._withdrawn.items()):
            if withdrawn[0] == old:
                self._withdrawn[ref] = (new,) + withdrawn[1:]

    def enqueue(self, device: str, feature: str, pending: Pending, now: float) -> List[Notify]:
        relation = self.relations.get((device, feature))
        if relation is None:
            return []
        if relation.queue is _EMPTY:
            relation.queue = deque()
        relation.queue.append(pending)
        return self._pump(relation, now)

    def held(self, device: str, feature: str) -> int:
        """Items of the relation queued or in flight (0 without a relation)."""
        relation = self.relations.get((device, feature))
        if relation is None:
            return 0
        return len(relation.queue) + (relation.in_flight is not None)

    def purge(self, device: str, feature: str, now: float) -> List[Pending]:
        """Take the expired items out of the relation's queue (not the one in flight)."""
        relation = self.relations.get((device, feature))
        if relation is None or not relation.queue:
            return []
        expired = [p for p in relation.queue if p.expires is not None and p.expires <= now]
        if expired:
            relation.queue = deque(p for p in relation.queue
                                   if p.expires is None or p.expires > now)
        return expired

    def on_result(self, ref: int, outcome: str,
                  now: float) -> Tuple[List[Notify], List[Relation], List[Pending]]:
        """The fate of notification ``ref``: acknowledged, delivered, reset or timed out.

        Returns (notifications now due, relations that ended, their leftover items).
        """
        key = self._in_flight.pop(ref, None)
        relation = self.relations.get(key) if key else None
        if relation is None or relation.in_flight is None or relation.in_flight[0] != ref:
            return self._late_result(ref, outcome, now)
        if outcome == ACK or outcome == DELIVERED:
            relation.in_flight = None
            if outcome == DELIVERED:  # an RST may still come for it
                self._recent[ref] = (relation.device, relation.feature, relation.token)
                if len(self._recent) > RECENT:
                    self._recent.popitem(last=False)
            return self._pump(relation, now), [], []
        if outcome == RESET:
            return [], [relation], self._drop(key)  # type: ignore[arg-type]
        if outcome == WITHDRAWN:  # unheard: first in its queue again, sent when the gate opens
            withdrawn = self._withdrawn
            withdrawn[ref] = (relation.device, relation.feature, relation.token,
                              relation.in_flight[1])
            if len(withdrawn) > RECENT:
                withdrawn.popitem(last=False)
            self._take_back(relation)
            return self._pump(relation, now), [], []
        gate = self.gate
        if gate is not None and gate.asleep(relation.device, now):
            self._take_back(relation)  # unheard while it slept: it waits for the device
            gate.hold(relation.device)
            return [], [], []
        # timeout: every relation of that peer is dead
        ended, leftovers = self.cancel_remote(relation.remote)
        return [], ended, leftovers

    def _late_result(self, ref: int, outcome: str,
                     now: float) -> Tuple[List[Notify], List[Relation], List[Pending]]:
        """An RST to a notification reported delivered before ends its relation, if the
        relation is still the one it went to (same token); so does one to a notification
        withdrawn, and an ACK of that one takes it out of its queue (it was heard)."""
        if ref in self._withdrawn and (outcome == ACK or outcome == RESET):
            return self._heard_after_all(self._withdrawn.pop(ref), outcome, now)
        recent = self._recent.pop(ref, None)
        if recent is None or outcome != RESET:
            return [], [], []
        key = (recent[0], recent[1])
        relation = self.relations.get(key)
        if relation is None or relation.token != recent[2]:
            return [], [], []
        return [], [relation], self._drop(key)

    def _heard_after_all(self, withdrawn: Tuple[str, str, bytes, Pending], outcome: str,
                         now: float) -> Tuple[List[Notify], List[Relation], List[Pending]]:
        device, feature, token, pending = withdrawn
        key = (device, feature)
        relation = self.relations.get(key)
        if relation is None or relation.token != token:
            return [], [], []
        if outcome == RESET:
            return [], [relation], self._drop(key)
        queue = relation.queue
        for index, waiting in enumerate(queue):
            if waiting is pending:  # still waiting (not sent again yet): it was heard
                del queue[index]
                return self._pump(relation, now), [], []
        return [], [], []

    def observed_by(self, remote: Hashable) -> bool:
        """Whether ``remote`` has a relation (a DTLS session with one is in use)."""
        return remote in self._by_remote

    def cancel_remote(self, remote: Hashable) -> Tuple[List[Relation], List[Pending]]:
        """End every relation of ``remote``: (the relations, their leftover items)."""
        ended: List[Relation] = []
        leftovers: List[Pending] = []
        held = self._by_remote.get(remote)
        for relation in [] if held is None else list(held) if isinstance(held, list) \
                else [held]:
            ended.append(relation)
            leftovers += self._drop((relation.device, relation.feature))
        return ended, leftovers

    def resume(self, device: str, features: Tuple[str, ...], now: float) -> List[Notify]:
        """The gate opened for ``device`` (it woke): its queued notifications go."""
        out: List[Notify] = []
        for feature in features:
            relation = self.relations.get((device, feature))
            if relation is not None:
                out += self._pump(relation, now)
        return out

    def in_flight(self, device: str,
                  features: Tuple[str, ...]) -> List[Tuple[int, Hashable]]:
        """The notifications of ``device`` waiting for their fate: (ref, remote) each (its
        device fell asleep: the transport is asked to withdraw them)."""
        return [(relation.in_flight[0], relation.remote) for relation in
                (self.relations.get((device, feature)) for feature in features)
                if relation is not None and relation.in_flight is not None]

    def device_of(self, ref: int) -> Optional[str]:
        """The device CON notification ``ref`` went to (while it is in flight)."""
        key = self._in_flight.get(ref)
        return key[0] if key is not None else None

    def _take_back(self, relation: Relation) -> None:
        assert relation.in_flight is not None
        if relation.queue is _EMPTY:
            relation.queue = deque()
        relation.queue.appendleft(relation.in_flight[1])
        relation.in_flight = None

    def _pump(self, relation: Relation, now: float) -> List[Notify]:
        """The relation's next notification, unless one is in flight (one at a time), or
        the gate holds the device's downlinks (it sleeps)."""
        queue = relation.queue
        gate = self.gate
        while queue and relation.in_flight is None:
            pending = queue[0]
            if pending.expires is not None and pending.expires <= now:
                self.expired.append(queue.popleft())
                continue
            if gate is not None and not gate.may_send(relation.device, now):
                break  # the device sleeps: the queue waits for it (``resume``)
            queue.popleft()
            self._next_ref += 1
            notify = Notify(self._next_ref, relation.remote, relation.token, pending.code,
                            pending.payload, relation.next_observe(now), relation.device,
                            relation.block_size, pending.content_format, relation.observation)
            relation.sent(pending.payload)
            relation.in_flight = (notify.ref, pending)
            self._in_flight[notify.ref] = (relation.device, relation.feature)
            return [notify]
        return []

    def _drop(self, key: Tuple[str, str]) -> List[Pending]:
        relation = self.relations.pop(key)
        self._unindex(relation.remote, relation)
        self.changed(key, None)
        leftovers = []
        if relation.in_flight is not None:
            self._in_flight.pop(relation.in_flight[0], None)
            leftovers.append(relation.in_flight[1])
            relation.in_flight = None
        leftovers += list(relation.queue)
        relation.queue = _EMPTY
        return leftovers

    def _index(self, remote: Hashable, relation: Relation) -> None:
        held = self._by_remote.get(remote)
        if held is None:
            self._by_remote[remote] = relation
        elif isinstance(held, list):
            held.append(relation)
        else:
            self._by_remote[remote] = [held, relation]

    def _unindex(self, remote: Hashable, relation: Relation) -> None:
        held = self._by_remote[remote]
        if not isinstance(held, list):
            del self._by_remote[remote]
            return
        for index, other in enumerate(held):
            if other is relation:
                del held[index]
                break
        if len(held) == 1:
            self._by_remote[remote] = held[0]
