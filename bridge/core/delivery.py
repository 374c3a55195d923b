"""Delivery of stored uplinks to the broker: per-device order, a bounded window, fairness.

Every uplink a device was told 2.01 for is an ``Entry`` in the durable outbox.
``Delivery`` decides which entry goes next: devices take turns (round robin),
so one device's long backlog neither floods the broker nor starves the
others; each device's entries go in the order they were stored; at most
``window`` publishes wait for a PUBACK at once. Entries that were in flight
when the link dropped go back to the head of their device's queue.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple


@dataclass(frozen=True)
class Entry:
    id: int
    device: str
    device_type: str
    topic: str
    payload: bytes
    created: float  # when the device was answered 2.01


class Delivery:
    def __init__(self, window: int):
        self.window = window
        self.queues: Dict[str, Deque[Entry]] = {}
        self.ring: Deque[str] = deque()  # devices with queued entries, in turn order
        self._in_ring: Set[str] = set()
        self.in_flight: Dict[int, Tuple[Entry, float]] = {}  # publish ref -> entry, sent at
        self.count = 0  # entries queued or in flight
        self.bytes = 0

    def add(self, entry: Entry) -> None:
        self.queues.setdefault(entry.device, deque()).append(entry)
        self.count += 1
        self.bytes += len(entry.payload)
        self._enter_ring(entry.device)

    def oldest(self) -> Optional[float]:
        times = [q[0].created for q in self.queues.values() if q]
        times += [entry.created for entry, _ in self.in_flight.values()]
        return min(times) if times else None

    def has_room(self) -> bool:
        return len(self.in_flight) < self.window

    def next_device(self) -> Optional[str]:
        """The device whose turn it is, rotated to the back of the ring."""
        while self.ring:
            device = self.ring.popleft()
            self._in_ring.discard(device)
            if self.queues.get(device):
                return device
        return None

    def take(self, device: str, ref: int, now: float) -> Entry:
        queue = self.queues[device]
        entry = queue.popleft()
        if not queue:
            del self.queues[device]
        else:
            self._enter_ring(device)
        self.in_flight[ref] = (entry, now)
        return entry

    def park(self, device: str) -> None:
        """Take ``device`` out of turn (it waits for its connect); ``resume`` puts it back."""
        self._in_ring.discard(device)

    def resume(self, device: str) -> None:
        if self.queues.get(device):
            self._enter_ring(device)

    def done(self, ref: int) -> Optional[Entry]:
        """The broker acknowledged ``ref`` (or refused it for good): forget the entry."""
        item = self.in_flight.pop(ref, None)
        if item is None:
            return None
        self.count -= 1
        self.bytes -= len(item[0].payload)
        return item[0]

    def retry(self, ref: int) -> Optional[Entry]:
        """Put the entry of ``ref`` back at the head of its device's queue."""
        item = self.in_flight.pop(ref, None)
        if item is None:
            return None
        self._push_front([item[0]])
        return item[0]

    def requeue_all(self) -> None:
        """The link dropped: everything in flight is sent again, in the original order."""
        entries = [entry for entry, _ in self.in_flight.values()]
        self.in_flight.clear()
        self._push_front(entries)

    def oldest_in_flight(self) -> Optional[float]:
        return min((sent for _, sent in self.in_flight.values()), default=None)

    def rename(self, old: str, new: str,
               payload: Optional[Callable[[Entry], bytes]] = None) -> None:
        """The platform renamed a device: its waiting entries (queued and in flight) follow,
        their payloads rewritten by ``payload(entry)``."""
        def renamed(entry: Entry) -> Entry:
            body = payload(entry) if payload is not None else entry.payload
            self.bytes += len(body) - len(entry.payload)
            return dataclasses.replace(entry, device=new, payload=body)
        for ref, (entry, sent) in list(self.in_flight.items()):
            if entry.device == old:
                self.in_flight[ref] = (renamed(entry), sent)
        if old in self.queues:
            moved = [renamed(entry) for entry in self.queues.pop(old)]
            self._in_ring.discard(old)
            if old in self.ring:
                self.ring.remove(old)
            self._push_front(moved)

    def drop_device(self, device: str) -> List[Entry]:
        """Take every queued entry of ``device`` out (in flight ones finish normally)."""
        entries = list(self.queues.pop(device, ()))
        self._in_ring.discard(device)
        if device in self.ring:
            self.ring.remove(device)
        self.count -= len(entries)
        self.bytes -= sum(len(e.payload) for e in entries)
        return entries

    def _push_front(self, entries: List[Entry]) -> None:
        """Put entries back where they belong by id: ahead of everything stored later."""
        for entry in sorted(entries, key=lambda e: e.id):
            queue = self.queues.setdefault(entry.device, deque())
            position = 0
            while position < len(queue) and queue[position].id < entry.id:
                position += 1
            queue.insert(position, entry)
            self._enter_ring(entry.device)

    def _enter_ring(self, device: str) -> None:
        if device not in self._in_ring:
            self._in_ring.add(device)
            self.ring.append(device)
