"""The outbox as the core sees it: stored uplinks, their delivery, and the backlog from before.

Stored entries are published by ``Delivery`` (devices take turns; the entries of many
devices share a publish) once their device's connect is acknowledged, removed on the
broker's PUBACK (``Delete``), or set aside when the platform refuses them
(``DeadLetter``). A PUBACK overdue by more than ``mqtt.puback_timeout`` resets the link.

The backlog found in the outbox at start is read in slices (``LoadBacklog``, answered by
``on_restored``), the next once delivery has taken half of the last, so that a full
outbox never sits in memory at once; until the last slice, entries stored meanwhile wait
on disk behind it, so that each device's entries are delivered in id order.
"""

from __future__ import annotations

from typing import List, Optional, Set

from . import gateway
from .actions import DeadLetter, Delete, Entry, LoadBacklog, Log, Publish, ResetLink
from .delivery import Delivery
from .devices import Devices
from .parts import Action, Part, Shared

# MQTT 5 PUBACK reason code that means "not now": ThingsBoard closes the link, we retry.
QUOTA_EXCEEDED = 0x97
# Slices of the backlog: at most this many entries, or about this many payload bytes.
RESTORE_ROWS = 5000
RESTORE_BYTES = 4 * 1024 * 1024


class Outbox(Part):
    def __init__(self, shared: Shared, devices: Devices):
        super().__init__()
        self.shared = shared
        self.devices = devices
        mqtt = shared.config.mqtt
        self.puback_timeout = mqtt.puback_timeout
        # a batch's payloads add up to at most what fits in a packet with the longest
        # mergeable topic and a 4-byte length field (an empty payload needs only 1)
        overhead = max(gateway.publish_packet_size(topic, b"", mqtt.mqtt5)
                       for topic in gateway.MERGEABLE) + 3
        self.delivery = Delivery(mqtt.max_inflight, shared.config.outbox.max_batch,
                                 mqtt.max_packet_size - overhead, gateway.MERGEABLE)
        self.draining = False  # shutting down: publish no more stored entries
        self.oldest_entry: Optional[float] = None  # creation time of the oldest stored entry
        # every entry with an id above ``backlog_after`` waits on disk, also those stored
        # since. None: every entry is in ``delivery``.
        self.backlog_after: Optional[int] = None
        self.backlog_count = 0
        self.backlog_bytes = 0
        self.slice_rows, self.slice_bytes = RESTORE_ROWS, RESTORE_BYTES
        self._backlog_asked = False  # a LoadBacklog is out
        self._deleted_in_backlog: Set[str] = set()  # devices deleted while entries wait on disk
        self.stats = {"delivered": 0, "publishes": 0, "dead_lettered": 0}

    # == gauges ==============================================================

    @property
    def count(self) -> int:
        """Entries waiting (in memory and on disk), for admission and metrics."""
        return self.delivery.count + self.backlog_count

    @property
    def bytes(self) -> int:
        return self.delivery.bytes + self.backlog_bytes

    def holds_entries(self, name: str) -> bool:
        return name in self.delivery.queues

    def busy_devices(self) -> Set[str]:
        return set(self.delivery.queues) | self.delivery.devices_in_flight()

    # == entries in ==========================================================

    def stored(self, entries: List[Entry], first_id: int, now: float) -> int:
        """Entries written under ids from ``first_id``: delivered from now (or read with the
        backlog, in id order). Returns their payload bytes."""
        size = 0
        if self.backlog_after is None:
            add, new = self.delivery.add, tuple.__new__
            for entry_id, (_, device, device_type, topic, payload, created) in enumerate(
                    entries, first_id):
                add(new(Entry, (entry_id, device, device_type, topic, payload, created)))
                size += len(payload)
        else:
            size = sum(len(entry.payload) for entry in entries)
            self.backlog_count += len(entries)
            self.backlog_bytes += size
        if self.oldest_entry is None:
            self.oldest_entry = now
        return size

    def oldest(self, now: float, max_age: float) -> Optional[float]:
        """The creation time of the oldest entry; kept by ``stored`` and the tick, exact only
        when it matters (it is older than ``max_age``)."""
        oldest = self.oldest_entry
        if oldest is not None and now - oldest > max_age:
            oldest = self.oldest_entry = self.delivery.oldest()
        return oldest

    def on_backlog(self, count: int, size: int, now: float) -> List[Action]:
        if count:
            self.backlog_after = 0
            self.backlog_count, self.backlog_bytes = count, size
        return self._load_backlog()

    def on_restored(self, entries: List[Entry], now: float, more: bool) -> List[Action]:
        actions: List[Action] = []
        self._backlog_asked = False
        entries = sorted(entries, key=lambda e: e.id)
        for entry in entries:
            if entry.device in self._deleted_in_backlog:
                actions.append(DeadLetter(entry.id, "the platform deleted device %s"
                                          % entry.device))
            else:
                self.delivery.add(entry)
        if actions:
            actions.append(Log("warn", "{count:plural:stored uplink} of deleted devices set aside",
                               {"count": len(actions)}))
        if self.backlog_after is not None:
            if more and entries:
                self.backlog_after = entries[-1].id
                self.backlog_count = max(0, self.backlog_count - len(entries))
                self.backlog_bytes = max(0, self.backlog_bytes
                                         - sum(len(e.payload) for e in entries))
            else:  # all read: from now on new entries go straight to delivery
                self.backlog_after = None
                self.backlog_count = self.backlog_bytes = 0
                self._deleted_in_backlog.clear()
        self.oldest_entry = self.delivery.oldest()
        return actions + self.pump(now) + self._load_backlog()

    def _load_backlog(self) -> List[Action]:
        """Ask for the next slice of the backlog once delivery has taken half of the last."""
        if self.backlog_after is None or self._backlog_asked \
                or self.delivery.count > self.slice_rows // 2 \
                or self.delivery.bytes > self.slice_bytes // 2:
            return []
        self._backlog_asked = True
        return [LoadBacklog(self.backlog_after, self.slice_rows, self.slice_bytes)]

    # == entries out =========================================================

    def pump(self, now: float) -> List[Action]:
        """Publish stored entries while the window has room: devices take turns, and the
        entries of many devices share a publish (see delivery.py)."""
        actions: List[Action] = []
        if not self.shared.link_up or self.draining:
            return actions
        delivery, devices = self.delivery, self.devices

        states = devices.states

        def blocked(name: str) -> bool:  # a device publishes once its connect is acknowledged
            state = states.get(name)
            if state is not None and state.connected:  # the common case, in line
                return False
            return devices.blocked(name, delivery.queues[name][0].device_type, now, actions)

        refs = self.shared.refs
        while delivery.has_room():
            ref = next(refs)
            batch = delivery.take_batch(ref, now, blocked)
            if not batch:
                break
            first = batch[0]
            if len(batch) == 1:
                actions.append(Publish(ref, first.topic, first.payload, first.device))
            else:
                payload = gateway.merge(first.topic, [(e.device, e.payload) for e in batch])
                actions.append(Publish(ref, first.topic, payload, "%d uplinks" % len(batch)))
        return actions

    def on_published(self, ref: int, reason_code: int, now: float) -> Optional[List[Action]]:
        """The PUBACK of publish ``ref``; None when it carried no stored entries."""
        if ref not in self.delivery.in_flight:
            return None
        if reason_code < 0x80:
            batch = self.delivery.done(ref)
            assert batch is not None
            self.stats["delivered"] += len(batch)
            self.stats["publishes"] += 1
            actions: List[Action] = [Delete(tuple([entry.id for entry in batch]),
                                           tuple([entry.created for entry in batch]))]
            actions += self.pump(now)
            if self.backlog_after is not None:
                actions += self._load_backlog()
            return actions
        if reason_code == QUOTA_EXCEEDED:  # transient: ThingsBoard closes the link, we retry
            self.delivery.retry(ref)
            return [Log("warn", "platform quota exceeded (PUBACK 0x{reason_code:02x}); will retry",
                        {"reason_code": reason_code})]
        return self._refused(ref, reason_code, now)

    def _refused(self, ref: int, reason_code: int, now: float) -> List[Action]:
        reason = "platform refused it with PUBACK reason 0x%02x" % reason_code
        batch = self.delivery.in_flight[ref][0]
        if len(batch) > 1:
            # which of them did it refuse? each goes again alone, and only that one is set aside
            self.delivery.split(ref)
            return [Log("warn", "the platform refused a publish of {count:plural:uplink} (PUBACK "
                                "0x{reason_code:02x}); sending them one by one",
                        {"count": len(batch), "reason_code": reason_code})] \
                + self.pump(now)
        entry = batch[0]
        self.delivery.done(ref)
        self.stats["dead_lettered"] += 1
        return [DeadLetter(entry.id, reason),
                Log("warn", "outbox entry {id} of {device} set aside: {reason}",
                    {"id": entry.id, "device": entry.device, "reason": reason})] + self.pump(now)

    def on_not_sent(self, ref: int) -> bool:
        """Whether ``ref`` carried stored entries (they go back to their queues)."""
        return self.delivery.retry(ref) is not None

    # == hooks ===============================================================

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        if slow:
            self.oldest_entry = self.delivery.oldest()
        return []

    def on_tick_end(self, now: float, slow: bool) -> List[Action]:
        oldest = self.delivery.oldest_in_flight()
        if oldest is not None and now - oldest > self.puback_timeout:
            self.shared.link_up = False  # until the edge reports the new link
            return [ResetLink("no PUBACK for %.0f s" % (now - oldest))]
        return self.pump(now)

    def on_link_up(self, now: float) -> List[Action]:
        return self.pump(now)

    def on_link_down(self, now: float) -> List[Action]:
        self.delivery.requeue_all()  # in flight: back to the head of their queues
        return []

    def rename(self, old: str, new: str) -> None:
        self.delivery.rename(old, new, lambda entry: gateway.rename_device(
            entry.topic, entry.payload, old, new))

    def forget(self, name: str) -> List[Action]:
        dropped = self.delivery.drop_device(name)
        if self.backlog_after is not None:  # its entries still on disk go aside when read
            self._deleted_in_backlog.add(name)
        reason = "the platform deleted device %s" % name
        actions: List[Action] = [DeadLetter(entry.id, reason) for entry in dropped]
        if dropped:
            actions.append(Log("warn", "{count:plural:stored uplink} of {device} set aside: "
                               "{reason}", {"count": len(dropped), "device": name, "reason": reason}))
        return actions
