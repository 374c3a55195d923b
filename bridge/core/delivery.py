"""Delivery of stored uplinks to the broker: batches, per-device order, a bounded window.

Every uplink a device was told 2.01 for is an ``Entry`` in the durable outbox.
``Delivery`` decides which entries go next and how they share publishes:

* devices take turns (round robin), so one device's long backlog neither
  floods the broker nor starves the others;
* each device's entries go in the order they were stored;
* entries of many devices on a mergeable topic (telemetry, attributes) travel
  together in one publish, a *batch*, bounded in entries and bytes; a batch
  holds a run of consecutive entries of each device, so order is kept;
* at most ``window`` publishes wait for a PUBACK at once. Batches are as large
  as what waits: under light load each publish carries what one turn stored,
  under heavy load the waiting grows and so do the batches (no timer delays
  anything);
* entries that were in flight when the link dropped go back to the head of
  their device's queue; the entries of a batch the platform refused are sent
  again one per publish (``split``), so one bad entry cannot take the others
  down with it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

from .actions import Entry


class Delivery:
    def __init__(self, window: int, max_batch: int = 1, max_bytes: int = 1 << 30,
                 per_device: Optional[Dict[str, int]] = None):
        self.window = window
        self.max_batch = max_batch  # entries in one publish
        self.max_bytes = max_bytes  # sum of the payloads of one publish
        self.per_device = per_device or {}  # mergeable topic -> most entries per device, 0: any
        self.queues: Dict[str, Deque[Entry]] = {}
        self.ring: Deque[str] = deque()  # devices with queued entries, in turn order
        self._in_ring: Set[str] = set()
        self.in_flight: Dict[int, Tuple[List[Entry], float]] = {}  # ref -> batch, sent at
        self.solo: Set[int] = set()  # entry ids that must be published alone
        self.count = 0  # entries queued or in flight
        self.bytes = 0

    def add(self, entry: Entry) -> None:
        device = entry.device  # read once: a NamedTuple's fields cost more to read
        queue = self.queues.get(device)
        if queue is None:
            queue = self.queues[device] = deque()
        queue.append(entry)
        self.count += 1
        self.bytes += len(entry.payload)
        if device not in self._in_ring:
            self._in_ring.add(device)
            self.ring.append(device)

    def oldest(self) -> Optional[float]:
        times = [q[0].created for q in self.queues.values() if q]
        times += [entry.created for batch, _ in self.in_flight.values() for entry in batch]
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

    def take_batch(self, ref: int, now: float,
                   blocked: Callable[[str], bool] = lambda device: False) -> List[Entry]:
        """The entries of the next publish ``ref``, in flight from now on (empty: none waits).

        Devices come in turn; ``blocked(device)`` says a device cannot publish yet (its
        connect is pending): it is parked, out of turn until ``resume``. The first entry
        sets the batch's topic; other devices join with the run of entries at the head of
        their queue on that topic, a device whose head is on another topic keeps its turn
        for a later publish."""
        batch: List[Entry] = []
        skipped: List[str] = []
        in_batch: Set[str] = set()
        topic = ""
        limit = size = 0
        ring, in_ring, queues = self.ring, self._in_ring, self.queues
        while len(batch) < self.max_batch and len(skipped) < self.max_batch:
            if not ring:
                break
            device = ring.popleft()  # ``next_device``, in line: its turn, to the back
            in_ring.discard(device)
            queue = queues.get(device)
            if not queue or blocked(device):
                continue
            head = queue[0]
            if not batch:
                topic = head.topic
                limit = self.per_device.get(topic, -1)
                if limit < 0 or head.id in self.solo:  # published alone
                    batch.append(self._pop(device, queue))
                    break
            elif device in in_batch or head.topic != topic or head.id in self.solo:
                skipped.append(device)
                continue
            elif size + len(head.payload) > self.max_bytes:
                skipped.append(device)
                break
            in_batch.add(device)
            size = self._take_run(device, queue, topic, limit, batch, size)
        self._keep_turn(skipped)
        if batch:
            self.in_flight[ref] = (batch, now)
        return batch

    def _take_run(self, device: str, queue: Deque[Entry], topic: str, limit: int,
                  batch: List[Entry], size: int) -> int:
        """Move the run of ``device``'s entries on ``topic`` at the head of its queue (at
        most ``limit`` of them, 0: no limit) into ``batch``; returns the batch's new size."""
        solo = self.solo
        taken = 0
        while queue and len(batch) < self.max_batch and (limit == 0 or taken < limit):
            entry = queue[0]
            length = len(entry.payload)
            if entry.topic != topic or (solo and entry.id in solo) or \
                    (batch and size + length > self.max_bytes):
                break
            batch.append(queue.popleft())
            size += length
            taken += 1
        if not queue:  # what ``_pop`` does, once for the run
            del self.queues[device]
        elif device not in self._in_ring:
            self._in_ring.add(device)
            self.ring.append(device)
        return size

    def _keep_turn(self, skipped: List[str]) -> None:
        """Devices skipped for this batch go back to the front of the ring, in order."""
        for device in reversed(skipped):
            if device not in self._in_ring:
                self._in_ring.add(device)
                self.ring.appendleft(device)

    def _pop(self, device: str, queue: Deque[Entry]) -> Entry:
        entry = queue.popleft()
        if not queue:
            del self.queues[device]
        elif device not in self._in_ring:
            self._in_ring.add(device)
            self.ring.append(device)
        return entry

    def resume(self, device: str) -> None:
        """Give a parked device (one ``next_device`` or a ``blocked`` batch took out of
        turn while it waits for its connect) its turn again."""
        if self.queues.get(device):
            self._enter_ring(device)

    def done(self, ref: int) -> Optional[List[Entry]]:
        """The broker acknowledged ``ref`` (or refused it for good): forget its entries."""
        item = self.in_flight.pop(ref, None)
        if item is None:
            return None
        batch = item[0]
        self.count -= len(batch)
        for entry in batch:
            self.bytes -= len(entry.payload)
            if self.solo:
                self.solo.discard(entry.id)
        return batch

    def retry(self, ref: int) -> Optional[List[Entry]]:
        """Put the entries of ``ref`` back at the head of their devices' queues."""
        item = self.in_flight.pop(ref, None)
        if item is None:
            return None
        self._push_front(item[0])
        return item[0]

    def split(self, ref: int) -> Optional[List[Entry]]:
        """Like ``retry``, and each entry of ``ref`` is published alone from now on."""
        batch = self.retry(ref)
        if batch is not None:
            self.solo.update(entry.id for entry in batch)
        return batch

    def requeue_all(self) -> None:
        """The link dropped: everything in flight is sent again, in the original order."""
        entries = [entry for batch, _ in self.in_flight.values() for entry in batch]
        self.in_flight.clear()
        self._push_front(entries)

    def oldest_in_flight(self) -> Optional[float]:
        return min((sent for _, sent in self.in_flight.values()), default=None)

    def devices_in_flight(self) -> Set[str]:
        return {entry.device for batch, _ in self.in_flight.values() for entry in batch}

    def rename(self, old: str, new: str,
               payload: Optional[Callable[[Entry], bytes]] = None) -> None:
        """The platform renamed a device: its waiting entries (queued and in flight) follow,
        their payloads rewritten by ``payload(entry)``."""
        def renamed(entry: Entry) -> Entry:
            body = payload(entry) if payload is not None else entry.payload
            self.bytes += len(body) - len(entry.payload)
            return entry._replace(device=new, payload=body)
        for ref, (batch, sent) in list(self.in_flight.items()):
            if any(entry.device == old for entry in batch):
                self.in_flight[ref] = ([renamed(e) if e.device == old else e for e in batch], sent)
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
        for entry in entries:
            self.solo.discard(entry.id)
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
