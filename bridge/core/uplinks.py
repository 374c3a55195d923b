"""Uplinks into the outbox: admission, the accounting of what is being written, the bulk path.

A device gets 2.01 once its uplink is stored durably (``Store``, then ``on_stored``); the
plain telemetry and attribute uploads of a turn arrive together in ``on_uplinks`` and
leave as one ``StoreMany``, answered by one ``Created``. A full outbox (``outbox.max_*``)
answers 5.03 with Max-Age; an uplink that could never be published (over the platform's
packet size) 4.13. Payloads are read by the device's format (formats/).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codes, gateway, routes
from .actions import Created, Device, Entry, Log, Reply, Request, Store, StoreMany, Uplink
from .auth import Authenticator
from .codes import CoapError
from .devices import Devices
from .formats import Formats
from .limits import RequestLimits
from .outbox import Outbox
from .parts import RETRY_AFTER, Action, Part, Shared, address, error_reply, unavailable


_INTERNAL_ERROR = Reply(0, codes.INTERNAL_SERVER_ERROR, b"internal error", codes.TEXT_PLAIN,
                       reason="internal error")


class Uplinks(Part):
    def __init__(self, shared: Shared, outbox: Outbox, devices: Devices, auth: Authenticator,
                 limits: RequestLimits, formats: Formats):
        super().__init__()
        config = shared.config
        self.shared = shared
        self.outbox = outbox
        self.devices = devices.states  # read on the hot path: last_active of the device
        self.auth = auth
        self.limits = limits
        self.formats = formats
        self.settings = config.outbox
        self.max_packet_size = config.mqtt.max_packet_size
        self.mqtt5 = config.mqtt.mqtt5
        # a topic shorter than 256 and this many bytes with its payload fits whatever the
        # UTF-8 of the topic and the length field add (``check_size``)
        self.fits = self.max_packet_size - gateway.MAX_PUBLISH_OVERHEAD
        # attribute names uploaded (set by the facade: attributes reads use them)
        self.learn_keys: Callable[[str, Dict[str, Any]], None] = lambda name, values: None
        # a device was heard from (set by the facade: power saving, power.py)
        self.heard: Callable[[Device, float], Any] = lambda device, now: ()
        # store ref -> (its request ref, or the refs of a StoreMany; the core's own copies
        # of the entries being written, renamed here if the device is): see ``rename``
        self.storing: Dict[int, Tuple[Any, List[Entry]]] = {}
        self.quiet: Set[int] = set()  # request refs whose 2.01 a NON request goes without
        self.storing_count = 0  # uplinks being written
        self.storing_bytes = 0
        self.full_since: Optional[float] = None
        self.failing = StoreFailures()
        self.stats = {"acknowledged": 0, "refused_full": 0, "store_failed": 0}

    # == the device API ======================================================

    def on_telemetry(self, device: Device, request: Request, now: float) -> List[Action]:
        if request.method != codes.POST:
            raise codes.BadRequest("telemetry cannot be read or observed")
        return self.store(device, *self.plain(device, routes.TELEMETRY, request.payload, now),
                          request.ref, now)

    def on_attributes(self, device: Device, request: Request, now: float) -> List[Action]:
        return self.store(device, *self.plain(device, routes.ATTRIBUTES, request.payload, now),
                          request.ref, now)

    def on_claim(self, device: Device, request: Request, now: float) -> List[Action]:
        if request.method != codes.POST:
            raise codes.BadRequest("claim accepts POST only")
        message = self.formats.of(device.type).claim(device.name, request.payload)
        return self.store(device, *message, request.ref, now)

    def plain(self, device: Device, feature: str, payload: bytes, now: float) -> Tuple[str, bytes]:
        """The gateway message of a telemetry or client-attributes upload."""
        fmt = self.formats.of(device.type)
        if feature == routes.TELEMETRY:
            return fmt.telemetry(device.name, payload, now)
        topic, body, values = fmt.attributes(device.name, payload)
        self.learn_keys(device.name, values)
        return topic, body

    def on_uplinks(self, uplinks: List[Uplink], now: float) -> List[Action]:
        """Plain uplinks (POST /api/v1/{token}/telemetry or .../attributes, or token-less over
        a DTLS session), in their order: each checked and answered as ``on_request`` would,
        those admitted stored in one ``StoreMany``, answered 2.01 by one ``Created``."""
        actions: List[Action] = []
        refs: List[int] = []
        rows: List[Entry] = []
        failed: List[Tuple[int, Exception]] = []
        try:
            self._admit_uplinks(uplinks, now, actions, refs, rows, failed)
        except Exception:
            # a bug outside one uplink: the edge answers the whole turn 5.00, and what
            # was admitted is not written
            self.storing_count -= len(rows)
            self.storing_bytes -= sum(len(entry.payload) for entry in rows)
            raise
        if failed:
            actions.append(_failed_uplinks(failed))
        if rows:
            store = StoreMany(next(self.shared.refs), tuple(rows))
            self.storing[store.ref] = (tuple(refs), rows)
            actions.append(store)
        return actions

    def _admit_uplinks(self, uplinks: List[Uplink], now: float, actions: List[Action],
                       refs: List[int], rows: List[Entry],
                       failed: List[Tuple[int, Exception]]) -> None:
        """``on_uplinks``' checks, uplink by uplink: the admitted ones' refs and rows (and
        the answers to the others) appended as they come."""
        limits, by_token, plain, admit = self.limits, self.auth.by_token, self.plain, self.admit
        peer_allow = limits.peers.allow if limits.peers.enabled else None
        device_allow = limits.devices.allow if limits.devices.enabled else None
        authenticate, heard = self.auth.authenticate, self.heard
        formats, known_formats, telemetry = self.formats, self.formats.by_type, routes.TELEMETRY
        new = tuple.__new__  # Entry(...) without the keyword handling: a third of the cost
        fits, states = self.fits, self.devices
        room, room_bytes = self._room(now)  # an uplink within it and the packet size is
        # admitted here, the others by ``admit`` (which answers them)
        for ref, token, feature, payload, remote in uplinks:
            device = None
            try:
                if peer_allow is not None and (wait := peer_allow(
                        remote[0] if type(remote) is tuple else address(remote), now)):
                    limits.refuse_peer(wait)
                device = by_token(token, remote, now) if type(token) is str \
                    else authenticate(token, remote, now)
                actions += heard(device, now)  # power saving: () for most devices
                if device_allow is not None and (wait := device_allow(device.name, now)):
                    limits.refuse_device(wait)
                topic, body = (known_formats.get(device.type) or formats.of(device.type)) \
                    .telemetry(device.name, payload, now) if feature == telemetry \
                    else plain(device, feature, payload, now)
                size = len(body)
                if room > 0 and size <= room_bytes and len(topic) < 256 \
                        and size + len(topic) <= fits:
                    room -= 1
                    room_bytes -= size
                    self.storing_count += 1
                    self.storing_bytes += size
                    state = states.get(device.name)
                    if state is not None:
                        state.last_active = now
                else:
                    admitted = admit(device, topic, body, ref, now, actions)
                    room, room_bytes = self._room(now)
                    if not admitted:
                        continue
                refs.append(ref)
                rows.append(new(Entry, (0, device.name, device.type, topic, body, now)))
            except CoapError as err:
                actions.append(error_reply(ref, err, device is not None))
            except Exception as exc:  # a bug: 5.00 for this uplink only, not its turn
                failed.append((ref, exc))
                actions.append(_INTERNAL_ERROR._replace(ref=ref))

    # == admission ===========================================================

    def store(self, device: Device, topic: str, payload: bytes, request_ref: int,
              now: float, quiet: bool = False) -> List[Action]:
        """Store the uplink durably; the device gets 2.01 once it is written (``on_stored``);
        ``quiet``: not if it sent a NON request (``Reply.quiet``; errors are answered)."""
        actions: List[Action] = []
        if self.admit(device, topic, payload, request_ref, now, actions):
            if quiet:
                self.quiet.add(request_ref)
            store = Store(next(self.shared.refs),
                          Entry(0, device.name, device.type, topic, payload, now))
            self.storing[store.ref] = (request_ref, [store.entry])
            actions.append(store)
        return actions

    def store_own(self, device: Device, topic: str, payload: bytes,
                  now: float) -> List[Action]:
        """A message the bridge itself writes for ``device`` (ThingsBoard's ``transportLog``):
        stored and delivered as the device's uplinks are, in their order, answered to no
        one; not written when the outbox is full or the message too large."""
        if self._full(len(payload), now) or len(payload) + len(topic) > \
                self.max_packet_size - gateway.MAX_PUBLISH_OVERHEAD:
            return []
        self.storing_count += 1
        self.storing_bytes += len(payload)
        store = Store(next(self.shared.refs), Entry(0, device.name, device.type, topic,
                                                    payload, now))
        self.storing[store.ref] = (None, [store.entry])
        return [store]

    def admit(self, device: Device, topic: str, payload: bytes, request_ref: int, now: float,
              actions: List[Action]) -> bool:
        """Whether the outbox takes an uplink of ``device`` now (it is then counted as being
        written); if not, the 5.03 answer goes to ``actions``. 4.13 if it can never be sent."""
        if len(topic) >= 256 or len(payload) + len(topic) > self.fits:
            self.check_size(topic, payload)  # it may not fit
        full = self._full(len(payload), now)
        if full:
            self.stats["refused_full"] += 1
            if self.full_since is None:
                self.full_since = now
                actions.append(Log("warn", "outbox full ({reason}): devices get 5.03 until it "
                                   "drains", {"reason": full}))
            actions.append(Reply(request_ref, codes.SERVICE_UNAVAILABLE, max_age=RETRY_AFTER,
                                 reason="outbox full: " + full))
            return False
        if self.full_since is not None:
            self.full_since = None
            actions.append(Log("info", "outbox accepts uplinks again"))
        state = self.devices.get(device.name)
        if state is not None:
            state.last_active = now
        self.storing_count += 1
        self.storing_bytes += len(payload)
        return True

    def check_size(self, topic: str, payload: bytes) -> None:
        """4.13 for a gateway message larger than the platform takes (``mqtt.max_packet_size``)."""
        limit = self.max_packet_size
        if len(topic) < 256 and len(payload) + len(topic) <= limit - gateway.MAX_PUBLISH_OVERHEAD:
            return  # fits whatever the UTF-8 of the topic and the length field add
        if gateway.publish_packet_size(topic, payload, self.mqtt5) > limit:
            raise codes.EntityTooLarge("gateway message would exceed the platform's %d-byte limit"
                                       % limit, size1=limit)

    def _room(self, now: float) -> Tuple[int, int]:
        """The entries and payload bytes the outbox takes now before a bound: (0, 0) while
        it is full or was last found full (``admit`` sees to the answer and the log)."""
        if self.full_since is not None or self._full(0, now) is not None:
            return 0, 0
        settings, outbox = self.settings, self.outbox
        return (settings.max_entries - outbox.count - self.storing_count,
                settings.max_bytes - outbox.bytes - self.storing_bytes)

    def full(self, now: float) -> Optional[str]:
        """Why the outbox would refuse an uplink now (a bound reached), or None."""
        return self._full(0, now)

    def _full(self, size: int, now: float) -> Optional[str]:
        settings, outbox = self.settings, self.outbox
        if outbox.count + self.storing_count >= settings.max_entries:
            return "%d %s" % (settings.max_entries,
                              "entry" if settings.max_entries == 1 else "entries")
        if outbox.bytes + self.storing_bytes + size > settings.max_bytes:
            return "%d bytes" % settings.max_bytes
        oldest = outbox.oldest(now, settings.max_age)
        if oldest is not None and now - oldest > settings.max_age:
            return "oldest entry older than %.0f s" % settings.max_age
        return None

    # == written, or not =====================================================

    def on_stored(self, stored: List[Tuple[int, int]], now: float) -> List[Action]:
        """The edge wrote ``(store ref, outbox id)`` pairs durably (for a ``StoreMany``, the
        id of its first row; the others follow it): acknowledge the devices."""
        actions: List[Action] = []
        for store_ref, first_id in stored:
            refs, entries = self.storing.pop(store_ref)
            size = self.outbox.stored(entries, first_id, now)
            self.storing_count -= len(entries)
            self.storing_bytes -= size
            self.stats["acknowledged"] += len(entries)
            if type(refs) is tuple:
                actions.append(Created(refs))
            elif refs is None:  # the bridge's own (store_own): nobody waits for it
                pass
            elif refs in self.quiet:
                self.quiet.discard(refs)
                actions.append(Reply(refs, codes.CREATED, quiet=True))
            else:
                actions.append(Reply(refs, codes.CREATED))
        if self.failing.since is not None:
            actions.append(self.failing.recovered(now))
        return actions + self.outbox.pump(now)

    def on_store_failed(self, store_refs: List[int], reason: str, now: float) -> List[Action]:
        actions: List[Action] = []
        refused = 0
        for store_ref in store_refs:
            refs, entries = self.storing.pop(store_ref)
            self.storing_count -= len(entries)
            self.storing_bytes -= sum(len(entry.payload) for entry in entries)
            self.stats["store_failed"] += len(entries)
            refused += len(entries)
            for request_ref in (refs if type(refs) is tuple else [] if refs is None else [refs]):
                self.quiet.discard(request_ref)
                actions.append(unavailable(request_ref, "outbox write failed"))
        line = self.failing.failed(reason, refused, now)
        if line is not None:
            actions.insert(0, line)
        return actions

    def on_update_failed(self, reason: str, now: float) -> List[Action]:
        """A write of removals alone failed (the edge keeps them for its next write): the
        same condition as a failed store (a full disk fails both), so the same spell and the
        same throttled lines, not a second line of its own."""
        line = self.failing.failed(reason, 0, now)
        return [line] if line is not None else []

    def on_updated(self, now: float) -> List[Action]:
        """A write of removals alone succeeded: the end of a spell of failures, if any."""
        return [self.failing.recovered(now)] if self.failing.since is not None else []

    def rename(self, old: str, new: str) -> None:
        """Uplinks still being written follow the device: the core renames its own copies
        (delivered once written); the edge wrote the entries as they were emitted, and
        renames what the outbox holds when it applies ``RenameDevice``."""
        for _, entries in self.storing.values():
            for i, entry in enumerate(entries):
                if entry.device == old:
                    payload = gateway.rename_device(entry.topic, entry.payload, old, new)
                    self.storing_bytes += len(payload) - len(entry.payload)
                    entries[i] = entry._replace(device=new, payload=payload)


class StoreFailures:
    """What the log says while the outbox cannot be written (a full disk, say): the first
    failure at once, with SQLite's own words; then, while writes keep failing for the same
    reason, one line every ``EVERY`` seconds with what was refused meanwhile (a line per
    failed turn would flood the log under load); a new reason at once; and one line when a
    write succeeds again."""

    EVERY = 60.0

    def __init__(self) -> None:
        self.since: Optional[float] = None  # the first failure of this spell
        self.reason = ""
        self.logged = 0.0  # when the last line was written
        self.refused = 0  # uplinks refused since then
        self.total = 0  # uplinks refused in this spell

    def failed(self, reason: str, refused: int, now: float) -> Optional[Log]:
        self.refused += refused
        self.total += refused
        if self.since is None or reason != self.reason:
            first = self.since is None
            if first:
                self.since = now
            self.reason, self.logged, count, self.refused = reason, now, self.refused, 0
            return Log("error", "could not store uplinks: {reason}; devices get 5.03 until "
                       "the outbox can be written (uplinks refused: {count})",
                       {"reason": reason, "count": count})
        if now - self.logged < self.EVERY:
            return None
        seconds, self.logged, count, self.refused = now - self.logged, now, self.refused, 0
        return Log("error", "the outbox still cannot be written: {reason} (uplinks refused "
                   "in the last {seconds:.0f} s: {count})",
                   {"reason": reason, "count": count, "seconds": seconds})

    def recovered(self, now: float) -> Log:
        assert self.since is not None
        line = Log("info", "the outbox is written again, after {seconds:.0f} s in which it "
                   "could not be ({reason}; uplinks refused: {count})",
                   {"seconds": now - self.since, "reason": self.reason, "count": self.total})
        self.since, self.reason, self.refused, self.total = None, "", 0, 0
        return line


def _failed_uplinks(failed: List[Tuple[int, Exception]]) -> Log:
    """One error line, with the first traceback, for the uplinks of a turn that hit a bug."""
    ref, first = failed[0]
    if len(failed) == 1:
        return Log("error", "Handling uplink {ref} failed: answered 5.00", {"ref": ref},
                   error=first)
    return Log("error", "Handling uplink {ref} failed (and {more} more uplinks of this turn): "
               "answered 5.00", {"ref": ref, "more": len(failed) - 1}, error=first)
