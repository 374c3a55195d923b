"""The gateway session: the pure heart of the bridge.

``GatewayCore`` takes events (a CoAP request, a PUBACK, a downstream MQTT
message, an observe notification's fate, the link going up or down, a timer
tick) with ``now`` in seconds, and returns actions (see actions.py).

Uplinks: a device gets 2.01 once its uplink is stored durably (``Store``, then
``on_stored``; the plain telemetry and attribute uploads of a turn arrive together
in ``on_uplinks`` and leave as one ``StoreMany``, answered by one ``Created``);
stored entries are published by ``Delivery`` and removed on the broker's PUBACK
(``Delete``), or set aside when the platform refuses them (``DeadLetter``); a full
outbox answers 5.03 with Max-Age. Every device-scoped publish is preceded by
``v1/gateway/connect`` (and waits for its PUBACK), so the platform creates
the device with its profile and pushes its attributes and RPCs to this
connection.

Downstream: attribute reads, shared-attribute and RPC observe, RPC replies
and client-side RPC (see downstream.py for the message shapes and
observe.py for relations).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from . import codes, gateway, payloads, routes
from . import ota, provision
from .actions import (Created, DeadLetter, Delete, DeleteDevice, Device, LoadBacklog, Log,
                      Notify, Provision, Publish, RenameDevice, Reply, Request, ResetLink, Row, ServePackage, Store,
                      StoreMany, Uplink)
from .delivery import Delivery, Entry
from .codes import CoapError
from .downstream import (GATEWAY_RPC_REQUEST_PREFIX, GATEWAY_RPC_RESPONSE_PREFIX, AttributeUpdate,
                         ServerRpc, attribute_response, attribute_update, keys_param, loads,
                         server_rpc, topic_suffix_int, undecodable_reason)
from .limits import RateLimiter
from .tokenscan import UnknownTokens
from .observe import Observers, Pending

Action = Union[Reply, Publish, Notify, RenameDevice, DeleteDevice, Log, Store, StoreMany, Created,
               Delete, DeadLetter, ResetLink, Provision, ServePackage]
Lookup = Callable[[str], Optional[Device]]

# MQTT 5 PUBACK reason codes that mean the platform will not take the message.
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99

ATTRIBUTES_FEATURE = routes.ATTRIBUTES
RPC_FEATURE = routes.RPC
CLIENT, SHARED, DISCOVER = "client", "shared", "discover"
MAX_KNOWN_KEYS = 1000
SKIP_WARNING_INTERVAL = 60  # seconds between warnings about unreadable platform messages


@dataclass(frozen=True)
class CoreSettings:
    ack_timeout: float = 10.0
    idle_timeout: float = 600.0
    max_packet_size: int = 65536
    mqtt5: bool = True
    retry_after: int = 5  # Max-Age hint (s) on 5.03
    request_timeout: float = 10.0  # attribute reads and client-side RPC -> 5.04
    rpc_queue_size: int = 100  # server RPCs waiting per device for an observer
    rpc_queue_ttl: float = 60.0
    max_observers: int = 100000
    con_interval: float = 86400.0
    client_rpc_method: str = "deviceRpc"
    window: int = 100  # outbox publishes waiting for a PUBACK at once
    max_batch: int = 1  # stored uplinks of many devices carried by one publish
    outbox_max_entries: int = 1_000_000
    outbox_max_bytes: int = 512 * 1024 * 1024
    outbox_max_age: float = 7 * 86400.0
    device_rate: float = 0.0  # requests per second per device (0: unlimited)
    device_burst: float = 20.0
    peer_rate: float = 0.0  # requests per second per source address (0: unlimited)
    peer_burst: float = 50.0
    provision_rate: float = 0.0  # provisioning requests per second per source address
    provision_burst: float = 10.0
    download_rate: float = 0.0  # package bytes per second per device (0: unlimited)
    download_burst: float = 16 * 1024 * 1024
    json_max_depth: int = payloads.MAX_DEPTH  # deeper device documents get 4.00
    # the backlog found in the outbox at start is read in slices of this many entries (or
    # payload bytes), the next when delivery has taken half of the last: memory stays bounded
    restore_rows: int = 5000
    restore_bytes: int = 4 * 1024 * 1024


@dataclass
class _DeviceState:
    device: Device
    last_active: float
    connected: bool = False
    connect_ref: Optional[int] = None
    connect_deadline: float = 0.0
    waiting: List[Publish] = field(default_factory=list)
    retry_at: float = 0.0  # after a refused connect


@dataclass
class _Pending:
    """A publish outside the outbox (attribute request, client RPC) waiting for its PUBACK.

    Nobody waits for these PUBACKs: the answer to the device comes on a response
    topic, or its own deadline (``request_timeout``) answers 5.04."""

    device: str
    deadline: float


@dataclass
class _Fetch:
    """Reading attributes from the platform: for a GET, an observe start, or a refresh."""

    purpose: str  # "read", "observe", "refresh" or "ota"
    device: str
    request: Optional[Request]
    client_keys: Optional[List[str]]  # None: not wanted; []: all
    shared_keys: Optional[List[str]]
    deadline: float
    client: Dict[str, Any] = field(default_factory=dict)
    shared: Dict[str, Any] = field(default_factory=dict)
    outstanding: Set[int] = field(default_factory=set)
    pushes: List[AttributeUpdate] = field(default_factory=list)
    failed: Optional[str] = None


@dataclass
class _RpcItem:
    rpc: ServerRpc
    expires: float


@dataclass
class _ClientRpc:
    request_ref: int
    device: str
    deadline: float


class GatewayCore:
    def __init__(self, settings: CoreSettings, lookup: Lookup):
        self.settings = settings
        self.lookup = lookup
        self.link_up = False
        self.devices: Dict[str, _DeviceState] = {}
        self.pending: Dict[int, _Pending] = {}  # publish ref -> uplink waiting for its PUBACK
        self.connecting: Dict[int, str] = {}  # connect publish ref -> device
        self.observers = Observers(settings.max_observers, settings.con_interval)
        self.views: Dict[str, Dict[str, Any]] = {}  # device -> shared attributes
        self.known_keys: Dict[str, Set[str]] = {}  # device -> attribute names seen
        self.ota_attributes: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (device, kind) -> fw_*
        self.ota_waiting: Dict[int, Tuple[Request, str, str]] = {}  # fetch -> request, token, kind
        self.fetches: Dict[int, _Fetch] = {}
        self.attribute_requests: Dict[int, Tuple[int, str, List[str]]] = {}  # id -> fetch, scope, keys
        self.rpc_waiting: Dict[str, Deque[_RpcItem]] = {}  # device -> RPCs without an observer
        self.rpc_queued: Set[str] = set()  # devices with RPCs queued to an observer
        self.rpc_expired: List[_RpcItem] = []  # expired undelivered, for the tick to count
        self.rpc_full: Set[str] = set()  # devices whose RPCs are being dropped (logged once)
        self.client_rpcs: Dict[int, _ClientRpc] = {}
        # a batch's payloads add up to at most what fits in a packet with the longest
        # mergeable topic and a 4-byte length field (an empty payload needs only 1)
        overhead = max(gateway.publish_packet_size(topic, b"", settings.mqtt5)
                       for topic in gateway.MERGEABLE) + 3
        self.delivery = Delivery(settings.window, settings.max_batch,
                                 settings.max_packet_size - overhead, gateway.MERGEABLE)
        self.device_limits = RateLimiter(settings.device_rate, settings.device_burst)
        self.peer_limits = RateLimiter(settings.peer_rate, settings.peer_burst)
        self.provision_limits = RateLimiter(settings.provision_rate, settings.provision_burst)
        self.unknown_tokens = UnknownTokens()  # a warning at most once a minute
        # package blocks come from the local cache: they have a budget of bytes of their own
        self.download_limits = RateLimiter(settings.download_rate, settings.download_burst)
        # one warning per topic a minute for platform messages that cannot be read
        self.skip_warnings = RateLimiter(1 / SKIP_WARNING_INTERVAL, 1, max_keys=1000)
        # store ref -> (request ref, Store) or (request refs, StoreMany): what is being written
        self.storing: Dict[int, Tuple[Any, Any]] = {}
        self.storing_count = 0  # uplinks being written
        self.storing_bytes = 0
        self.full_since: Optional[float] = None
        self.draining = False  # shutting down: publish no more stored entries
        self.oldest_entry: Optional[float] = None  # creation time of the oldest stored entry
        # The backlog of the outbox not read yet (see on_backlog): every entry with an id
        # above ``backlog_after`` waits on disk, also those stored since, so that each
        # device's entries are delivered in id order. None: every entry is in ``delivery``.
        self.backlog_after: Optional[int] = None
        self.backlog_count = 0
        self.backlog_bytes = 0
        self._backlog_asked = False  # a LoadBacklog is out
        self._deleted_in_backlog: Set[str] = set()  # devices deleted while entries wait on disk
        self._next_slow_tick = 0.0
        self.stats: Dict[str, int] = {"acknowledged": 0, "delivered": 0, "publishes": 0,
                                      "dead_lettered": 0, "refused_full": 0, "store_failed": 0,
                                      "rate_limited": 0, "rpc_expired": 0, "rpc_dropped": 0,
                                      "unknown_token": 0, "downstream_skipped": 0}
        self._next_ref = 0
        self._next_attribute_id = 0
        self._next_client_rpc = 0

    # == events ==============================================================

    def on_request(self, request: Request, now: float) -> List[Action]:
        try:
            return self._handle(request, now)
        except CoapError as err:
            return [_error_reply(request.ref, err)]

    def on_published(self, ref: int, reason_code: int, now: float) -> List[Action]:
        """The broker acknowledged publish ``ref``; ``reason_code`` >= 0x80 is a refusal."""
        if ref in self.delivery.in_flight:
            return self._entry_acknowledged(ref, reason_code, now)
        name = self.connecting.get(ref)
        state = self.devices.get(name) if name is not None else None
        if state is not None and state.connect_ref == ref:
            return self._connect_done(state, reason_code < 0x80, now)
        self.connecting.pop(ref, None)
        self.pending.pop(ref, None)
        return []

    def on_stored(self, stored: List[Tuple[int, int]], now: float) -> List[Action]:
        """The edge wrote ``(store ref, outbox id)`` pairs durably (for a ``StoreMany``, the
        id of its first row; the others follow it): acknowledge the devices."""
        actions: List[Action] = []
        add = self.delivery.add
        on_disk = self.backlog_after is not None  # read with the backlog, in id order
        for store_ref, first_id in stored:
            refs, store = self.storing.pop(store_ref)
            rows = _rows(store)
            size = 0
            for entry_id, (device, device_type, topic, payload) in enumerate(rows, first_id):
                if not on_disk:
                    add(Entry(entry_id, device, device_type, topic, payload, now))
                size += len(payload)
            if on_disk:
                self.backlog_count += len(rows)
                self.backlog_bytes += size
            self.storing_count -= len(rows)
            self.storing_bytes -= size
            self.stats["acknowledged"] += len(rows)
            actions.append(Reply(refs, codes.CREATED) if isinstance(store, Store)
                           else Created(refs))
        if stored and self.oldest_entry is None:
            self.oldest_entry = now
        return actions + self._pump(now)

    def on_store_failed(self, store_refs: List[int], reason: str, now: float) -> List[Action]:
        actions: List[Action] = [Log("error", "could not store uplinks: %s" % reason)]
        for store_ref in store_refs:
            refs, store = self.storing.pop(store_ref)
            rows = _rows(store)
            self.storing_count -= len(rows)
            self.storing_bytes -= sum(len(row[3]) for row in rows)
            self.stats["store_failed"] += len(rows)
            for request_ref in ([refs] if isinstance(store, Store) else refs):
                actions.append(self._unavailable(request_ref, "outbox write failed"))
        return actions

    def on_backlog(self, count: int, size: int, now: float) -> List[Action]:
        """At start the outbox holds ``count`` entries (``size`` payload bytes) from before.

        They are read in slices (``LoadBacklog``, answered by ``on_restored``), the next
        once delivery has taken half of the last, so a full outbox never sits in memory
        at once. Until the last slice, entries stored meanwhile wait on disk behind them."""
        if count:
            self.backlog_after = 0
            self.backlog_count, self.backlog_bytes = count, size
        return self._load_backlog()

    def on_restored(self, entries: List[Entry], now: float, more: bool = False) -> List[Action]:
        """Entries read from the outbox, in id order: the slice a ``LoadBacklog`` asked for
        (``more``: others may follow the last of them), or, without ``on_backlog``, all."""
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
            actions.append(Log("warn", "%d stored uplinks of deleted devices set aside"
                               % len(actions)))
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
        return actions + self._pump(now) + self._load_backlog()

    def _load_backlog(self) -> List[Action]:
        """Ask for the next slice of the backlog once delivery has taken half of the last."""
        settings = self.settings
        if self.backlog_after is None or self._backlog_asked \
                or self.delivery.count > settings.restore_rows // 2 \
                or self.delivery.bytes > settings.restore_bytes // 2:
            return []
        self._backlog_asked = True
        return [LoadBacklog(self.backlog_after, settings.restore_rows, settings.restore_bytes)]

    def on_not_sent(self, ref: int, now: float) -> List[Action]:
        """The edge could not hand publish ``ref`` to the broker (the link just went away)."""
        if self.delivery.retry(ref) is not None:
            return []
        name = self.connecting.pop(ref, None)
        state = self.devices.get(name) if name is not None else None
        if state is not None and state.connect_ref == ref:
            state.connect_ref = None
            for pub in state.waiting:
                self.pending.pop(pub.ref, None)
            state.waiting = []
        self.pending.pop(ref, None)
        return []

    def on_link_up(self, now: float) -> List[Action]:
        """The gateway connection is (re)established: re-connect active and observing devices,
        and refresh the shared attributes of every device that observes them."""
        self.link_up = True
        actions: List[Action] = []
        horizon = now - self.settings.idle_timeout
        observing = {relation.device for relation in self.observers.relations.values()}
        for name, state in list(self.devices.items()):
            if state.last_active >= horizon or name in observing:
                actions.append(self._send_connect(state, now))
            elif name not in self.delivery.queues:
                del self.devices[name]
        for relation in list(self.observers.relations.values()):
            if relation.feature == ATTRIBUTES_FEATURE:
                actions += self._start_fetch("refresh", relation.device, None, None, [], now)
        return actions + self._pump(now)

    def on_link_down(self, now: float) -> List[Action]:
        """The connection is gone: reads and client RPCs waiting on the platform get 5.03;
        stored uplinks in flight go back to their queues."""
        self.link_up = False
        self.delivery.requeue_all()
        actions: List[Action] = []
        self.pending.clear()
        for fetch in self.fetches.values():
            if fetch.request is not None:
                actions.append(self._unavailable(fetch.request.ref, "upstream connection lost"))
        self.fetches.clear()
        self.ota_waiting.clear()
        self.attribute_requests.clear()
        for call in self.client_rpcs.values():
            actions.append(self._unavailable(call.request_ref, "upstream connection lost"))
        self.client_rpcs.clear()
        self.connecting.clear()
        for state in self.devices.values():
            state.connected = False
            state.connect_ref = None
            state.waiting.clear()
        return actions

    def on_tick(self, now: float) -> List[Action]:
        actions: List[Action] = []
        # Work that scans every device runs at most once a second: with 100,000 devices
        # it would otherwise eat the core's time at every tick.
        slow = now >= self._next_slow_tick
        if slow:
            self._next_slow_tick = now + 1.0
            self.oldest_entry = self.delivery.oldest()
        for ref in [ref for ref, p in self.pending.items() if p.deadline <= now]:
            pending = self.pending.pop(ref)
            state = self.devices.get(pending.device)
            if state is not None:
                state.waiting = [pub for pub in state.waiting if pub.ref != ref]
        for name, state in self.devices.items() if slow else ():
            if state.connect_ref is not None and state.connect_deadline <= now:
                self.connecting.pop(state.connect_ref, None)
                state.connect_ref = None  # the next publish sends connect again
            if not state.connected and state.connect_ref is None and state.retry_at <= now:
                self.delivery.resume(name)  # its stored entries wait for a new connect
        for fetch_id in [i for i, f in self.fetches.items() if f.deadline <= now]:
            actions += self._fetch_failed(fetch_id, "the platform did not answer the attribute "
                                                    "request in time")
        for n in [n for n, c in self.client_rpcs.items() if c.deadline <= now]:
            call = self.client_rpcs.pop(n)
            actions.append(Reply(call.request_ref, codes.GATEWAY_TIMEOUT,
                                 reason="the platform did not answer the RPC in time"))
        actions += self._rpcs_expired_logs(now, slow)
        scan = self.unknown_tokens.warning(now) if self.unknown_tokens.count else None
        if scan is not None:
            actions.append(Log("warn", scan))
        if slow:
            self.device_limits.sweep(now)
            self.peer_limits.sweep(now)
            self.provision_limits.sweep(now)
            self.download_limits.sweep(now)
        if self.link_up:
            if slow:
                actions += self._disconnect_idle(now)
            oldest = self.delivery.oldest_in_flight()
            if oldest is not None and now - oldest > self.settings.ack_timeout:
                self.link_up = False  # until the edge reports the new link
                actions.append(ResetLink("no PUBACK for %.0f s" % (now - oldest)))
            else:
                actions += self._pump(now)
        return actions

    def on_notified(self, ref: int, outcome: str, now: float) -> List[Action]:
        """A CON notification was acknowledged ("ack"), reset ("reset") or timed out ("timeout")."""
        notifies, ended, leftovers = self.observers.on_result(ref, outcome, now)
        actions: List[Action] = list(notifies)
        for relation in ended:
            actions.append(Log("info", "observe of /%s by %s ended (%s)"
                               % (relation.feature, relation.device, outcome), relation.device))
        self._requeue_rpcs(leftovers, now)
        return actions

    def on_message(self, topic: str, payload: bytes, now: float) -> List[Action]:
        """A message from the broker, on any topic (ThingsBoard pushes unsubscribed ones too)."""
        try:
            doc = loads(payload, self.settings.json_max_depth)
        except ValueError as error:
            return self._skipped(topic, undecodable_reason(error), now)
        if topic == gateway.ATTRIBUTES:
            update = attribute_update(doc)
            return self._attribute_update(update, now) if update else []
        if topic == gateway.RPC:
            rpc = server_rpc(doc)
            return self._server_rpc(rpc, now) if rpc else []
        if topic == gateway.ATTRIBUTES_RESPONSE:
            response = attribute_response(doc)
            return self._attribute_response(response, now) if response else []
        if topic == gateway.DISCONNECT:
            name = doc.get("device") if isinstance(doc, dict) else None
            state = self.devices.get(name) if isinstance(name, str) else None
            if state is not None:
                state.connected = False
                return [Log("info", "the platform closed the session of %s (reason %s)"
                            % (name, doc.get("reason")), name)]
            return []
        n = topic_suffix_int(topic, GATEWAY_RPC_RESPONSE_PREFIX)
        if n is not None:
            return self._client_rpc_response(n, payload)
        if topic_suffix_int(topic, GATEWAY_RPC_REQUEST_PREFIX) is not None:
            return self._gateway_rpc(doc, now)
        return [Log("debug", "ignored a message on %s" % topic)]

    def _skipped(self, topic: str, reason: str, now: float) -> List[Action]:
        """A platform message that cannot be read: logged (a warning per topic a minute)."""
        self.stats["downstream_skipped"] += 1
        # v1/devices/me/rpc/request/7 and /8 share one warning
        if self.skip_warnings.allow(topic.rstrip("0123456789"), now) is None:
            return [Log("warn", "skipped a message from the platform on %s: %s (more on this "
                        "topic within %d s are logged at debug level)"
                        % (topic, reason, SKIP_WARNING_INTERVAL))]
        return [Log("debug", "skipped a message from the platform on %s: %s" % (topic, reason))]

    def rename(self, old: str, new: str) -> None:
        state = self.devices.pop(old, None)
        if state is not None:
            state.device = Device(new, state.device.type)
            self.devices[new] = state
            if state.connect_ref is not None:
                self.connecting[state.connect_ref] = new
        if old in self.views:
            self.views[new] = self.views.pop(old)
        if old in self.rpc_waiting:
            self.rpc_waiting[new] = self.rpc_waiting.pop(old)
        for names in (self.rpc_queued, self.rpc_full):
            if old in names:
                names.discard(old)
                names.add(new)
        if old in self.known_keys:
            self.known_keys[new] = self.known_keys.pop(old)
        self.delivery.rename(old, new, lambda entry: gateway.rename_device(
            entry.topic, entry.payload, old, new))
        for _, store in self.storing.values():  # uplinks still being written follow too
            if isinstance(store, Store):
                if store.device == old:
                    payload = gateway.rename_device(store.topic, store.payload, old, new)
                    self.storing_bytes += len(payload) - len(store.payload)
                    store.device, store.payload = new, payload
                continue
            for i, (device, device_type, topic, payload) in enumerate(store.rows):
                if device == old:
                    renamed = gateway.rename_device(topic, payload, old, new)
                    self.storing_bytes += len(renamed) - len(payload)
                    store.rows[i] = (new, device_type, topic, renamed)
        self.observers.rename(old, new)
        for fetch in self.fetches.values():
            if fetch.device == old:
                fetch.device = new
        # RPCs carry the device name; the renamed device must still get them
        for item in self.rpc_waiting.get(new, ()):
            item.rpc = dataclasses.replace(item.rpc, device=new)
        for relation in self.observers.relations.values():
            if relation.device == new:
                pendings = list(relation.queue)
                if relation.in_flight is not None:
                    pendings.append(relation.in_flight[1])
                for pending in pendings:
                    if isinstance(pending.item, _RpcItem):
                        pending.item.rpc = dataclasses.replace(pending.item.rpc, device=new)

    # == requests ============================================================

    def on_uplinks(self, uplinks: List[Uplink], now: float) -> List[Action]:
        """Plain uplinks (POST /api/v1/{token}/telemetry or .../attributes), in the order
        they arrived: each is checked and answered as ``on_request`` would, and all that
        are admitted go to the outbox in one ``StoreMany``, answered 2.01 by one
        ``Created`` once stored. The common upload in bulk, without an object per step."""
        actions: List[Action] = []
        refs: List[int] = []
        rows: List[Row] = []
        failed: List[Tuple[int, Exception]] = []
        try:
            for ref, token, feature, payload, remote in uplinks:
                device = None
                try:
                    if self.peer_limits.enabled:
                        self._limit_peer(remote, now)
                    device = self._device(token, remote, now)
                    if self.device_limits.enabled:
                        self._limit_device(device, now)
                    topic, body = self._plain_uplink(device, feature, payload, now)
                    if self._admit(device, topic, body, ref, now, actions):
                        refs.append(ref)
                        rows.append((device.name, device.type, topic, body))
                except CoapError as err:
                    reply = _error_reply(ref, err)
                    reply.authenticated = device is not None
                    actions.append(reply)
                except Exception as exc:  # a bug: 5.00 for this uplink only, not its turn
                    failed.append((ref, exc))
                    actions.append(Reply(ref, codes.INTERNAL_SERVER_ERROR, b"internal error",
                                         codes.TEXT_PLAIN, reason="internal error"))
        except Exception:
            # a bug outside one uplink: the edge answers the whole turn 5.00, and what
            # was admitted is not written
            self.storing_count -= len(rows)
            self.storing_bytes -= sum(len(row[3]) for row in rows)
            raise
        if failed:
            actions.append(_failed_uplinks(failed))
        if rows:
            store = StoreMany(self._ref(), rows)
            self.storing[store.ref] = (refs, store)
            actions.append(store)
        return actions

    def _limit_peer(self, remote: Any, now: float) -> None:
        wait = self.peer_limits.allow(_address(remote), now)
        if wait is not None:
            self.stats["rate_limited"] += 1
            raise codes.TooManyRequests("too many requests from this address", max_age=wait)

    def _device(self, token: str, remote: Any, now: float) -> Device:
        """The device of access ``token``, or 4.01 (counted for the token scan warning)."""
        device = self.lookup(token)
        if device is None:
            self.stats["unknown_token"] += 1
            self.unknown_tokens.record(_address(remote), now)
            raise codes.Unauthorized("unknown access token")
        return device

    def _limit_device(self, device: Device, now: float) -> None:
        wait = self.device_limits.allow(device.name, now)
        if wait is not None:
            self.stats["rate_limited"] += 1
            raise codes.TooManyRequests("too many requests for this device", max_age=wait)

    def _plain_uplink(self, device: Device, feature: str, payload: bytes,
                      now: float) -> Tuple[str, bytes]:
        """The gateway message of a telemetry or client-attributes upload."""
        max_depth = self.settings.json_max_depth
        if feature == routes.TELEMETRY:
            doc = payloads.parse_json(payload, "telemetry", max_depth)
            if payloads.plain_values(doc):
                return gateway.telemetry_as_sent(device.name, int(now * 1000),
                                                 payloads.values_text(doc, payload))
            return gateway.telemetry(device.name, payloads.telemetry_entries(doc, int(now * 1000)))
        doc = payloads.parse_json(payload, "attributes", max_depth)
        values = payloads.attribute_values(doc)
        self._learn_keys(device.name, values)
        if payloads.plain_values(doc):
            return gateway.attributes_as_sent(device.name, payloads.values_text(doc, payload))
        return gateway.attributes(device.name, values)

    def _handle(self, request: Request, now: float) -> List[Action]:
        if self.peer_limits.enabled:
            self._limit_peer(request.remote, now)
        route = routes.route(request.method, request.path)
        if route.feature == routes.PROVISION:
            if self.provision_limits.enabled:  # it needs no token: bounded per address
                wait = self.provision_limits.allow(_address(request.remote), now)
                if wait is not None:
                    self.stats["rate_limited"] += 1
                    raise codes.TooManyRequests("too many provisioning requests from this "
                                                "address", max_age=wait)
            if request.method != codes.POST:
                raise codes.BadRequest("provision accepts POST only")
            return [Provision(request.ref, provision.parse_request(
                request.payload, self.settings.json_max_depth))]
        if route.token is None:
            raise codes.Unauthorized("missing access token")
        device = self._device(route.token, request.remote, now)
        post = request.method == codes.POST
        feature = route.feature
        if feature in (routes.FIRMWARE, routes.SOFTWARE):
            if post:
                raise codes.MethodNotAllowed("packages are downloaded with GET")
            kind = ota.FIRMWARE if feature == routes.FIRMWARE else ota.SOFTWARE
            return self._download(device, route.token, kind, request, now)
        if self.device_limits.enabled:
            self._limit_device(device, now)
        if feature == routes.ATTRIBUTES and not post:
            return self._get_attributes(device, request, now)
        if feature == routes.RPC:
            if not post:
                return self._get_rpc(device, request, now)
            if route.rpc_id is None:
                return self._client_rpc(device, request, now)
            if route.rpc_id > routes.MAX_RPC_ID:
                raise codes.BadRequest("rpc reply: id %d is out of range (0 to %d)"
                                       % (route.rpc_id, routes.MAX_RPC_ID))
            data = payloads.parse_json(request.payload, "rpc reply", self.settings.json_max_depth)
            topic, body = gateway.rpc_reply(device.name, route.rpc_id, data)
            return self._uplink(device, topic, body, request.ref, now)
        if feature == routes.TELEMETRY and not post:
            raise codes.BadRequest("telemetry cannot be read or observed")
        if feature in (routes.TELEMETRY, routes.ATTRIBUTES):
            message = self._plain_uplink(device, feature, request.payload, now)
            return self._uplink(device, *message, request.ref, now)
        if not post:
            raise codes.BadRequest("claim accepts POST only")
        info = payloads.parse_claim(request.payload, self.settings.json_max_depth)
        return self._uplink(device, *gateway.claim(device.name, info), request.ref, now)

    def _check_size(self, topic: str, payload: bytes) -> None:
        limit = self.settings.max_packet_size
        if len(topic) < 256 and len(payload) + len(topic) <= limit - gateway.MAX_PUBLISH_OVERHEAD:
            return  # fits whatever the UTF-8 of the topic and the length field add
        if gateway.publish_packet_size(topic, payload, self.settings.mqtt5) > limit:
            raise codes.EntityTooLarge("gateway message would exceed the platform's %d-byte limit"
                                       % limit, size1=limit)

    def _require_link(self) -> None:
        if not self.link_up:
            raise codes.ServiceUnavailable("upstream broker not connected",
                                           max_age=self.settings.retry_after)

    def _uplink(self, device: Device, topic: str, payload: bytes, request_ref: int,
                now: float) -> List[Action]:
        """Store the uplink durably; the device gets 2.01 once it is written (``on_stored``)."""
        actions: List[Action] = []
        if self._admit(device, topic, payload, request_ref, now, actions):
            store = Store(self._ref(), device.name, device.type, topic, payload)
            self.storing[store.ref] = (request_ref, store)
            actions.append(store)
        return actions

    def _admit(self, device: Device, topic: str, payload: bytes, request_ref: int, now: float,
               actions: List[Action]) -> bool:
        """Whether the outbox takes an uplink of ``device`` now (it is then counted as being
        written); if not, the 5.03 answer goes to ``actions``. 4.13 if it can never be sent."""
        self._check_size(topic, payload)
        full = self._outbox_full(len(payload), now)
        if full:
            self.stats["refused_full"] += 1
            if self.full_since is None:
                self.full_since = now
                actions.append(Log("warn", "outbox full (%s): devices get 5.03 until it drains"
                                   % full))
            actions.append(Reply(request_ref, codes.SERVICE_UNAVAILABLE,
                                 max_age=self.settings.retry_after, reason="outbox full: " + full))
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

    def _outbox_full(self, size: int, now: float) -> Optional[str]:
        settings = self.settings
        if self.delivery.count + self.backlog_count + self.storing_count \
                >= settings.outbox_max_entries:
            return "%d entries" % settings.outbox_max_entries
        if self.delivery.bytes + self.backlog_bytes + self.storing_bytes + size \
                > settings.outbox_max_bytes:
            return "%d bytes" % settings.outbox_max_bytes
        oldest = self.oldest_entry  # kept by on_stored and on_tick; exact only when it matters
        if oldest is not None and now - oldest > settings.outbox_max_age:
            oldest = self.oldest_entry = self.delivery.oldest()
        if oldest is not None and now - oldest > settings.outbox_max_age:
            return "oldest entry older than %.0f s" % settings.outbox_max_age
        return None

    def _pump(self, now: float) -> List[Action]:
        """Publish stored entries while the window has room: devices take turns, and the
        entries of many devices share a publish (see delivery.py)."""
        actions: List[Action] = []
        if not self.link_up or self.draining:
            return actions

        def blocked(name: str) -> bool:
            # a device publishes once its v1/gateway/connect is acknowledged
            state = self.devices.get(name)
            if state is None:
                head = self.delivery.queues[name][0]
                state = self.devices[name] = _DeviceState(Device(name, head.device_type), now)
            if state.connected:
                return False
            if state.connect_ref is None and state.retry_at <= now:
                actions.append(self._send_connect(state, now))
            return True  # parked until the connect is done

        while self.delivery.has_room():
            ref = self._ref()
            batch = self.delivery.take_batch(ref, now, blocked)
            if not batch:
                break
            first = batch[0]
            if len(batch) == 1:
                actions.append(Publish(ref, first.topic, first.payload, first.device))
            else:
                payload = gateway.merge(first.topic, [(e.device, e.payload) for e in batch])
                actions.append(Publish(ref, first.topic, payload, "%d uplinks" % len(batch)))
        return actions

    def _entry_acknowledged(self, ref: int, reason_code: int, now: float) -> List[Action]:
        if reason_code < 0x80:
            batch = self.delivery.done(ref)
            assert batch is not None
            self.stats["delivered"] += len(batch)
            self.stats["publishes"] += 1
            actions: List[Action] = [Delete(tuple(entry.id for entry in batch))]
            actions += self._pump(now)
            if self.backlog_after is not None:
                actions += self._load_backlog()
            return actions
        if reason_code == QUOTA_EXCEEDED:  # transient: ThingsBoard closes the link, we retry
            self.delivery.retry(ref)
            return [Log("warn", "platform quota exceeded (PUBACK 0x97); will retry")]
        reason = "platform refused it with PUBACK reason 0x%02x" % reason_code
        batch = self.delivery.in_flight[ref][0]
        if len(batch) > 1:
            # which of them did it refuse? each goes again alone, and only that one is set aside
            self.delivery.split(ref)
            return [Log("warn", "the platform refused a publish of %d uplinks (PUBACK 0x%02x); "
                                "sending them one by one" % (len(batch), reason_code))] \
                + self._pump(now)
        entry = batch[0]
        self.delivery.done(ref)
        self.stats["dead_lettered"] += 1
        return [DeadLetter(entry.id, reason),
                Log("warn", "outbox entry %d of %s set aside: %s" % (entry.id, entry.device, reason),
                    entry.device)] + self._pump(now)

    def _device_publish(self, device: Device, topic: str, payload: bytes, now: float,
                        deadline: float) -> List[Action]:
        """Publish for ``device``, after its ``v1/gateway/connect`` has been acknowledged."""
        state = self.devices.get(device.name)
        if state is None or state.device != device:
            state = self.devices[device.name] = _DeviceState(device, now)
        state.last_active = now
        publish = Publish(self._ref(), topic, payload, device.name)
        self.pending[publish.ref] = _Pending(device.name, deadline)
        if state.connected:
            return [publish]
        state.waiting.append(publish)
        if state.connect_ref is None:
            return [self._send_connect(state, now)]
        return []

    def _send_connect(self, state: _DeviceState, now: float) -> Publish:
        topic, payload = gateway.connect(state.device.name, state.device.type)
        publish = Publish(self._ref(), topic, payload, state.device.name)
        state.connected = False
        if state.connect_ref is not None:
            self.connecting.pop(state.connect_ref, None)
        state.connect_ref = publish.ref
        self.connecting[publish.ref] = state.device.name
        state.connect_deadline = now + self.settings.ack_timeout
        return publish

    def _connect_done(self, state: _DeviceState, ok: bool, now: float) -> List[Action]:
        self.connecting.pop(state.connect_ref, None)  # type: ignore[arg-type]
        state.connect_ref = None
        waiting, state.waiting = state.waiting, []
        if ok:
            state.connected = True
            self.delivery.resume(state.device.name)
            return [pub for pub in waiting if pub.ref in self.pending] + self._pump(now)
        state.retry_at = now + self.settings.retry_after
        actions: List[Action] = [Log("warn", "the platform refused to connect device %s"
                                     % state.device.name, state.device.name)]
        for pub in waiting:
            self.pending.pop(pub.ref, None)  # their fetches answer at their deadline
        return actions

    def _disconnect_idle(self, now: float) -> List[Action]:
        actions: List[Action] = []
        horizon = now - self.settings.idle_timeout
        observing = {relation.device for relation in self.observers.relations.values()}
        busy = {p.device for p in self.pending.values()} | {f.device for f in self.fetches.values()}
        busy |= set(self.delivery.queues) | self.delivery.devices_in_flight()
        for name, state in list(self.devices.items()):
            if state.last_active >= horizon or state.connect_ref is not None \
                    or name in busy or name in observing:
                continue
            del self.devices[name]
            if state.connected:
                topic, payload = gateway.disconnect(name)
                actions.append(Publish(self._ref(), topic, payload, name))
        return actions

    # == attributes ==========================================================

    def _get_attributes(self, device: Device, request: Request, now: float) -> List[Action]:
        if not request.query:
            later = self._later_block(device, ATTRIBUTES_FEATURE, request)
            if later is not None:
                return [later]
        if request.observe == 0:
            self._require_link()
            return self._start_fetch("observe", device.name, request, None, [], now, device)
        if request.observe == 1:
            ended, leftovers = self.observers.deregister(device.name, ATTRIBUTES_FEATURE,
                                                         request.remote, request.token)
            self._requeue_rpcs(leftovers, now)
        query = payloads.split_query(request.query)
        client_keys = keys_param(query.get("clientKeys"))
        shared_keys = keys_param(query.get("sharedKeys"))
        if client_keys is None and shared_keys is None:
            client_keys, shared_keys = [], []  # no keys: all client and all shared attributes
        self._require_link()
        return self._start_fetch("read", device.name, request, client_keys, shared_keys, now,
                                 device)

    def _start_fetch(self, purpose: str, name: str, request: Optional[Request],
                     client_keys: Optional[List[str]], shared_keys: Optional[List[str]],
                     now: float, device: Optional[Device] = None,
                     ota_wait: Optional[Tuple[str, str]] = None) -> List[Action]:
        if device is None:
            state = self.devices.get(name)
            if state is None:
                return []
            device = state.device
        fetch_id = self._ref()
        fetch = _Fetch(purpose, name, request, client_keys, shared_keys,
                       now + self.settings.request_timeout)
        self.fetches[fetch_id] = fetch
        if ota_wait is not None and request is not None:
            self.ota_waiting[fetch_id] = (request, ota_wait[0], ota_wait[1])
        actions: List[Action] = []
        if client_keys == [] or shared_keys == []:
            # The gateway API has no scoped "all": "keys": [] answers client and shared
            # attributes merged, so learn the names first, then ask each scope for them.
            actions += self._attribute_request(fetch_id, fetch, device, DISCOVER, [], now)
        for scope, keys in ((CLIENT, client_keys), (SHARED, shared_keys)):
            if keys:
                actions += self._attribute_request(fetch_id, fetch, device, scope, keys, now)
        return actions

    def _attribute_request(self, fetch_id: int, fetch: _Fetch, device: Device, scope: str,
                           keys: List[str], now: float) -> List[Action]:
        self._next_attribute_id += 1
        request_id = self._next_attribute_id
        self.attribute_requests[request_id] = (fetch_id, scope, keys)
        fetch.outstanding.add(request_id)
        body: Dict[str, Any] = {"id": request_id, "device": device.name, "client": scope == CLIENT}
        if len(keys) == 1:
            body["key"] = keys[0]
        else:
            body["keys"] = keys
        return self._device_publish(device, gateway.ATTRIBUTES_REQUEST, payloads.dumps(body), now,
                                    fetch.deadline)

    def _attribute_response(self, response: Any, now: float) -> List[Action]:
        entry = self.attribute_requests.pop(response.id, None)
        if entry is None:
            return []
        fetch_id, scope, keys = entry
        fetch = self.fetches.get(fetch_id)
        if fetch is None:
            return []
        fetch.outstanding.discard(response.id)
        values = response.values(keys)
        actions: List[Action] = []
        if scope == DISCOVER:
            if values is None:
                # ThingsBoard answers "keys": [] with a bare "value" when it finds exactly one
                # attribute; ask for every name this device is known to use instead.
                values = dict.fromkeys(self.known_keys.get(fetch.device, ()))
                if not values and fetch.purpose != "read":
                    # an observer still gets every change from now on
                    del self.fetches[fetch_id]
                    fetch.shared = dict(self.views.get(fetch.device, {}))
                    return [Log("warn", "the platform hid the name of %s's only attribute; "
                                "observing from the last known view" % fetch.device,
                                fetch.device)] + self._fetch_done(fetch, now)
                if not values:
                    return self._fetch_failed(fetch_id, "the platform answered a keys-less "
                                              "attribute request with an unnamed value",
                                              codes.BAD_GATEWAY)
            names = sorted(values)
            state = self.devices.get(fetch.device)
            if names and state is not None:
                for wanted, scoped in ((fetch.client_keys, CLIENT), (fetch.shared_keys, SHARED)):
                    if wanted == []:
                        actions += self._attribute_request(fetch_id, fetch, state.device, scoped,
                                                           names, now)
        elif values is None:
            return self._fetch_failed(fetch_id, "the platform's attribute response is ambiguous",
                                      codes.BAD_GATEWAY)
        elif scope == CLIENT:
            fetch.client.update(values)
        else:
            fetch.shared.update(values)
        self._learn_keys(fetch.device, values)
        if not fetch.outstanding:
            del self.fetches[fetch_id]
            if fetch.purpose == "ota":
                return actions + self._ota_fetched(fetch_id, fetch)
            actions += self._fetch_done(fetch, now)
        return actions

    def _fetch_done(self, fetch: _Fetch, now: float) -> List[Action]:
        if fetch.purpose == "read":
            assert fetch.request is not None
            body = {}
            if fetch.client:
                body["client"] = fetch.client
            if fetch.shared:
                body["shared"] = fetch.shared
            if not body:
                return [Reply(fetch.request.ref, codes.NOT_FOUND, reason="no such attributes")]
            return [Reply(fetch.request.ref, codes.CONTENT, payloads.dumps(body),
                          codes.APPLICATION_JSON)]
        view = fetch.shared
        for update in fetch.pushes:
            view = update.apply(view)
        old = self.views.get(fetch.device)
        self.views[fetch.device] = view
        if fetch.purpose == "observe":
            return self._register(fetch.request, fetch.device, ATTRIBUTES_FEATURE, codes.CONTENT,
                                  payloads.dumps(view), now)
        # refresh after a reconnect: tell the observer what changed meanwhile
        if old is None:
            return []
        delta: Dict[str, Any] = {k: v for k, v in view.items() if old.get(k, _MISSING) != v}
        deleted = [k for k in old if k not in view]
        if deleted:
            delta["deleted"] = deleted
        if not delta:
            return []
        return self.observers.enqueue(fetch.device, ATTRIBUTES_FEATURE,
                                      Pending(payloads.dumps(delta)), now)

    def _learn_keys(self, device: str, values: Dict[str, Any]) -> None:
        if not values:
            return
        known = self.known_keys.setdefault(device, set())
        if len(known) < MAX_KNOWN_KEYS:
            known.update(k for k in values if k != "deleted")

    def _fetch_failed(self, fetch_id: int, reason: str,
                      code: int = codes.GATEWAY_TIMEOUT) -> List[Action]:
        fetch = self.fetches.pop(fetch_id)
        self.ota_waiting.pop(fetch_id, None)
        for request_id in fetch.outstanding:
            self.attribute_requests.pop(request_id, None)
        if fetch.request is None:
            return [Log("warn", "could not refresh the shared attributes of %s: %s"
                        % (fetch.device, reason), fetch.device)]
        return [Reply(fetch.request.ref, code, reason=reason)]

    def _attribute_update(self, update: AttributeUpdate, now: float) -> List[Action]:
        self._learn_keys(update.device, update.data)
        for kind in (ota.FIRMWARE, ota.SOFTWARE):
            known = self.ota_attributes.get((update.device, kind))
            if known is not None and any(k.startswith(kind + "_") for k in
                                         list(update.data) + update.deleted):
                relevant = {k: v for k, v in update.data.items() if k in ota.keys(kind)}
                self.ota_attributes[(update.device, kind)] = AttributeUpdate(
                    update.device, dict(relevant, deleted=update.deleted)).apply(known)
        if update.device in self.views:
            self.views[update.device] = update.apply(self.views[update.device])
        for fetch in self.fetches.values():
            if fetch.device == update.device and fetch.purpose != "read":
                fetch.pushes.append(update)
        return self.observers.enqueue(update.device, ATTRIBUTES_FEATURE,
                                      Pending(payloads.dumps(update.data)), now)

    # == OTA ==================================================================

    def _download(self, device: Device, token: str, kind: str, request: Request,
                  now: float) -> List[Action]:
        query = ota.parse_query(request.query)
        if self.download_limits.enabled:
            self._limit_download(device, request, query, now)
        attributes = self.ota_attributes.get((device.name, kind))
        if attributes is not None:
            return self._serve(device.name, token, kind, attributes, query, request)
        if self.device_limits.enabled:  # this one asks the platform
            self._limit_device(device, now)
        self._require_link()
        return self._start_fetch("ota", device.name, request, None, ota.keys(kind), now, device,
                                 ota_wait=(token, kind))

    def _limit_download(self, device: Device, request: Request, query: ota.OtaQuery,
                        now: float) -> None:
        """A package request costs the bytes it can get: one block (at most 1024 bytes),
        of the size asked for by Block2 or ``size``."""
        asked = request.block2[1] if request.block2 is not None else query.size
        cost = min(asked, codes.BLOCK_SIZE) if asked else codes.BLOCK_SIZE
        wait = self.download_limits.allow(device.name, now, cost)
        if wait is not None:
            self.stats["rate_limited"] += 1
            raise codes.TooManyRequests("download rate limit of this device", max_age=wait)

    def _serve(self, name: str, token: str, kind: str, attributes: Dict[str, Any],
               query: ota.OtaQuery, request: Request) -> List[Action]:
        info = ota.package_from(attributes, kind)
        if info is None:
            raise codes.NotFound("no %s package is assigned to this device"
                                 % ("firmware" if kind == ota.FIRMWARE else "software"))
        ota.check(info, query)
        byte_range = query.byte_range()
        if byte_range is None:
            return [ServePackage(request.ref, name, token, info)]
        return [ServePackage(request.ref, name, token, info, byte_range[0], byte_range[1])]

    def _ota_fetched(self, fetch_id: int, fetch: _Fetch) -> List[Action]:
        request, token, kind = self.ota_waiting.pop(fetch_id)
        self.ota_attributes[(fetch.device, kind)] = dict(fetch.shared)
        try:
            return self._serve(fetch.device, token, kind, fetch.shared,
                               ota.parse_query(request.query), request)
        except CoapError as err:
            return [_error_reply(request.ref, err)]

    def reconnect_device(self, name: str, now: float) -> List[Action]:
        """The device's own MQTT session (OTA download) evicted its gateway sub-session."""
        state = self.devices.get(name)
        if state is None or not self.link_up:
            return []
        return [self._send_connect(state, now)]

    # == observe =============================================================

    def _register(self, request: Optional[Request], name: str, feature: str, code: int,
                  body: bytes, now: float) -> List[Action]:
        assert request is not None
        relation, leftovers = self.observers.register(
            name, feature, request.remote, request.token, request.confirmable, now,
            request.block2[1] if request.block2 is not None else codes.BLOCK_SIZE)
        self._requeue_rpcs(leftovers, now)
        content_format = codes.APPLICATION_JSON if body else None
        if relation is None:  # full: answer without Observe (RFC 7641 §4.1)
            return [Reply(request.ref, code, body, content_format,
                          reason="observer limit reached"),
                    Log("warn", "observer limit %d reached; %s not registered"
                        % (self.settings.max_observers, name), name)]
        relation.sent(body)
        actions: List[Action] = [Reply(request.ref, code, body, content_format,
                                       observe=self.observers.sequence())]
        if feature == RPC_FEATURE:
            queue = self.rpc_waiting.pop(name, deque())
            for item in queue:
                if item.expires > now:
                    self.rpc_queued.add(name)
                    actions += self.observers.enqueue(name, RPC_FEATURE, _rpc_pending(item), now)
                else:
                    self.rpc_expired.append(item)
        return actions

    def _later_block(self, device: Device, feature: str, request: Request) -> Optional[Reply]:
        """A GET without Observe of a later block of the representation the device's relation
        was last sent in blocks (RFC 7959 §2.6): that representation, which the edge cuts
        into the block asked for. None for any other request."""
        if request.observe is not None or request.block2 is None or request.block2[0] == 0:
            return None
        relation = self.observers.get(device.name, feature)
        if relation is None or relation.last is None:
            return None
        return Reply(request.ref, codes.CONTENT, relation.last, codes.APPLICATION_JSON)

    # == RPC =================================================================

    def _get_rpc(self, device: Device, request: Request, now: float) -> List[Action]:
        later = self._later_block(device, RPC_FEATURE, request)
        if later is not None:
            return [later]
        if request.observe == 0:
            state = self.devices.setdefault(device.name, _DeviceState(device, now))
            actions: List[Action] = []
            if self.link_up and not state.connected and state.connect_ref is None:
                # connect the device so that the platform routes its RPCs here
                actions.append(self._send_connect(state, now))
            return actions + self._register(request, device.name, RPC_FEATURE, codes.VALID, b"",
                                            now)
        if request.observe == 1:
            ended, leftovers = self.observers.deregister(device.name, RPC_FEATURE,
                                                         request.remote, request.token)
            self._requeue_rpcs(leftovers, now)
            return [Reply(request.ref, codes.VALID)]
        raise codes.BadRequest("GET /rpc needs Observe: 0 to subscribe, 1 to cancel")

    def _server_rpc(self, rpc: ServerRpc, now: float) -> List[Action]:
        """Held for the device (waiting for an observer, or queued behind a CON notification)
        until ``rpc_queue_ttl`` after it arrived, at most ``rpc_queue_size`` per device."""
        item = _RpcItem(rpc, now + self.settings.rpc_queue_ttl)
        name = rpc.device
        if self._rpcs_held(name) >= self.settings.rpc_queue_size:
            self._expire_rpcs(name, now)
            if self._rpcs_held(name) >= self.settings.rpc_queue_size:
                self.stats["rpc_dropped"] += 1
                if name in self.rpc_full:
                    return []
                self.rpc_full.add(name)
                return [Log("warn", "RPC %d for %s dropped: %d RPCs already wait for the device "
                            "(platform.rpc_queue_size); more are dropped, counted in "
                            "rpc_dropped_total" % (rpc.id, name, self._rpcs_held(name)), name)]
        self.rpc_full.discard(name)
        if self.observers.get(name, RPC_FEATURE) is not None:
            self.rpc_queued.add(name)
            return self.observers.enqueue(name, RPC_FEATURE, _rpc_pending(item), now)
        self.rpc_waiting.setdefault(name, deque()).append(item)
        return [Log("debug", "RPC %d for %s waits for an observer" % (rpc.id, name), name)]

    def _rpcs_held(self, name: str) -> int:
        """The RPCs held for ``name``: waiting for an observer, queued or in flight to it."""
        waiting = self.rpc_waiting.get(name)
        return (len(waiting) if waiting else 0) + self.observers.held(name, RPC_FEATURE)

    def _expire_rpcs(self, name: str, now: float) -> None:
        """Forget the held RPCs of ``name`` that are past their time (counted by the tick)."""
        queue = self.rpc_waiting.get(name)
        while queue and queue[0].expires <= now:
            self.rpc_expired.append(queue.popleft())
        if queue is not None and not queue:
            del self.rpc_waiting[name]
        self.observers.expired += self.observers.purge(name, RPC_FEATURE, now)

    def _requeue_rpcs(self, leftovers: List[Pending], now: float) -> None:
        """RPCs not yet acknowledged by the device wait for its next registration, in order,
        until their time is up: it runs from their arrival and does not start again, so no
        RPC is executed later than ``rpc_queue_ttl`` after the platform sent it."""
        items = [p.item for p in leftovers if isinstance(p.item, _RpcItem)]
        for item in reversed(items):
            if item.expires <= now:
                self.rpc_expired.append(item)
                continue
            queue = self.rpc_waiting.setdefault(item.rpc.device, deque())
            queue.appendleft(item)
            while len(queue) > self.settings.rpc_queue_size:  # cannot happen: kept as a bound
                queue.pop()
                self.stats["rpc_dropped"] += 1

    def _rpcs_expired_logs(self, now: float, slow: bool) -> List[Action]:
        """Count and log (one line per device) the RPCs that expired undelivered; once a
        second, take them out of the queues of observers too."""
        for name in list(self.rpc_queued) if slow else ():
            if self.observers.held(name, RPC_FEATURE):
                self.observers.expired += self.observers.purge(name, RPC_FEATURE, now)
            else:
                self.rpc_queued.discard(name)
        if slow and self.rpc_full:  # dropping ended: the next drop is logged again
            self.rpc_full = {n for n in self.rpc_full
                             if self._rpcs_held(n) >= self.settings.rpc_queue_size}
        for name, queue in list(self.rpc_waiting.items()):
            while queue and queue[0].expires <= now:
                self.rpc_expired.append(queue.popleft())
            if not queue:
                del self.rpc_waiting[name]
        expired = self.rpc_expired + [p.item for p in self.observers.expired
                                      if isinstance(p.item, _RpcItem)]
        if not expired:
            return []
        self.rpc_expired, self.observers.expired = [], []
        self.stats["rpc_expired"] += len(expired)
        by_device: Dict[str, List[int]] = {}
        for item in expired:
            by_device.setdefault(item.rpc.device, []).append(item.rpc.id)
        return [Log("info", "%s for %s expired undelivered (platform.rpc_queue_ttl %.0f s)"
                    % (_rpc_ids(ids), name, self.settings.rpc_queue_ttl), name)
                for name, ids in by_device.items()]

    def _client_rpc(self, device: Device, request: Request, now: float) -> List[Action]:
        doc = payloads.parse_json(request.payload, "rpc", self.settings.json_max_depth)
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str) or not doc["method"]:
            raise codes.BadRequest('rpc: expected {"method": "...", "params": ...}')
        self._next_client_rpc += 1
        n = self._next_client_rpc
        body = {"method": self.settings.client_rpc_method,
                "params": {"device": device.name, "method": doc["method"],
                           "params": doc.get("params")}}
        topic = GATEWAY_RPC_REQUEST_PREFIX + str(n)
        data = payloads.dumps(body)
        self._check_size(topic, data)
        self._require_link()
        self.client_rpcs[n] = _ClientRpc(request.ref, device.name,
                                         now + self.settings.request_timeout)
        state = self.devices.get(device.name)
        if state is not None:
            state.last_active = now
        publish = Publish(self._ref(), topic, data, device.name)
        self.pending[publish.ref] = _Pending(device.name, now + self.settings.ack_timeout)
        return [publish]

    def _client_rpc_response(self, n: int, payload: bytes) -> List[Action]:
        call = self.client_rpcs.pop(n, None)
        if call is None:
            return []
        return [Reply(call.request_ref, codes.CONTENT, payload, codes.APPLICATION_JSON)]

    def _gateway_rpc(self, doc: Any, now: float) -> List[Action]:
        if not isinstance(doc, dict):
            return []
        method, params = doc.get("method"), doc.get("params")
        if method == "gateway_device_renamed" and isinstance(params, dict):
            actions: List[Action] = []
            for old, new in params.items():
                if isinstance(new, str) and new:
                    self.rename(old, new)
                    actions.append(RenameDevice(old, new))
            return actions
        if method == "gateway_device_deleted" and isinstance(params, str):
            self.devices.pop(params, None)
            self.views.pop(params, None)
            self.rpc_waiting.pop(params, None)
            self.rpc_full.discard(params)
            self.known_keys.pop(params, None)
            dropped = self.delivery.drop_device(params)
            if self.backlog_after is not None:  # its entries still on disk go aside when read
                self._deleted_in_backlog.add(params)
            answers: List[Action] = []
            for fetch_id in [i for i, f in self.fetches.items() if f.device == params]:
                answers += self._fetch_failed(fetch_id, "the platform deleted the device",
                                              codes.UNAUTHORIZED)
            self.observers.cancel_device(params)
            reason = "the platform deleted device %s" % params
            answers += [DeadLetter(entry.id, reason) for entry in dropped]
            if dropped:
                answers.append(Log("warn", "%d stored uplinks of %s set aside: %s"
                                   % (len(dropped), params, reason), params))
            return answers + [DeleteDevice(params)]
        return [Log("info", "ignored gateway RPC %r" % (method,))]

    # == helpers =============================================================

    def _unavailable(self, request_ref: int, reason: str) -> Reply:
        return Reply(request_ref, codes.SERVICE_UNAVAILABLE, max_age=self.settings.retry_after,
                     reason=reason)

    def _ref(self) -> int:
        self._next_ref += 1
        return self._next_ref


_MISSING = object()


def _rows(store: Union[Store, StoreMany]) -> List[Row]:
    if isinstance(store, Store):
        return [(store.device, store.device_type, store.topic, store.payload)]
    return store.rows


def _rpc_pending(item: _RpcItem) -> Pending:
    return Pending(payloads.dumps(item.rpc.payload()), codes.CONTENT, item, item.expires)


def _rpc_ids(ids: List[int]) -> str:
    if len(ids) == 1:
        return "RPC %d" % ids[0]
    shown = ", ".join(str(i) for i in ids[:10])
    return "%d RPCs (%s%s)" % (len(ids), shown, ", ..." if len(ids) > 10 else "")


def _failed_uplinks(failed: List[Tuple[int, Exception]]) -> Log:
    """One error line, with the first traceback, for the uplinks of a turn that hit a bug."""
    ref, first = failed[0]
    more = " (and %d more uplinks of this turn)" % (len(failed) - 1) if len(failed) > 1 else ""
    return Log("error", "Handling uplink %d failed%s: answered 5.00" % (ref, more), error=first)


def _error_reply(ref: int, err: CoapError) -> Reply:
    return Reply(ref, err.code, payload=err.reason.encode("utf-8"),
                 content_format=codes.TEXT_PLAIN if err.reason else None,
                 max_age=err.max_age, size1=err.size1, reason=err.reason)


def _address(remote: Any) -> Any:
    """The source address of a remote (host, port): limits apply per address, not per port."""
    return remote[0] if isinstance(remote, tuple) and remote else remote
