"""RPC: server-side RPCs to devices, client-side RPCs from them, and the gateway's own RPCs.

Server-side: the platform's RPC (``v1/gateway/rpc``) goes to the device's observer of
/rpc as a notification; it is held for the device (waiting for an observer, or queued
behind a CON notification) until ``platform.rpc_queue_ttl`` after it arrived, at most
``platform.rpc_queue_size`` per device, then dropped and counted, never sent late. An RPC
the device's format cannot write (params that do not fit a PROTOBUF profile's RPC request
schema) is answered to the platform with ThingsBoard's error instead; the relation stays.
The device's reply (POST /rpc/{id}) is an uplink like any other.

Client-side: POST /rpc goes out on the gateway's own session as
``v1/devices/me/rpc/request/{n}`` (method ``platform.client_rpc_method``), answered 2.05
with the platform's response, 5.04 at ``platform.request_timeout``.

Gateway RPCs (on the same request topic, from the platform): a device renamed or deleted,
handed to the facade, which tells every part.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Set

from . import codes, gateway, payloads, routes
from .actions import Device, Log, Publish, RenameDevice, Reply, Request
from .devices import Devices
from .downstream import GATEWAY_RPC_REQUEST_PREFIX, ServerRpc
from .formats import CannotEncode, Formats
from .observe import Pending
from .parts import Action, Part, Shared, unavailable
from .subscriptions import Subscriptions
from .uplinks import Uplinks

FEATURE = routes.RPC
# what ThingsBoard answers the platform for an RPC it cannot write in the device's format
CONVERSION_ERROR = "Failed to convert device RPC command to CoAP msg"


@dataclass
class _RpcItem:
    rpc: ServerRpc
    expires: float


@dataclass
class _ClientRpc:
    request_ref: int
    device: str
    deadline: float
    device_type: str  # its answer is in this type's format (the device may be unknown then)


class Rpc(Part):
    def __init__(self, shared: Shared, devices: Devices, subscriptions: Subscriptions,
                 uplinks: Uplinks, formats: Formats):
        super().__init__()
        self.shared = shared
        self.devices = devices
        self.subscriptions = subscriptions
        self.observers = subscriptions.observers
        self.uplinks = uplinks
        self.formats = formats
        platform = shared.config.platform
        self.settings = platform
        self.puback_timeout = shared.config.mqtt.puback_timeout
        self.waiting: Dict[str, Deque[_RpcItem]] = {}  # device -> RPCs without an observer
        self.queued: Set[str] = set()  # devices with RPCs queued to an observer
        self.expired: List[_RpcItem] = []  # expired undelivered, for the tick to count
        self.full: Set[str] = set()  # devices whose RPCs are being dropped (logged once)
        self.client_rpcs: Dict[int, _ClientRpc] = {}
        self._next_client_rpc = 0
        # the platform renamed or deleted a device (set by the facade: every part follows)
        self.renamed: Callable[[str, str], None] = lambda old, new: None
        self.deleted: Callable[[str], List[Action]] = lambda name: []
        self.stats = {"rpc_expired": 0, "rpc_dropped": 0}
        subscriptions.requeue = self._requeue
        subscriptions.registered[FEATURE] = self._registered

    # == the device API ======================================================

    def on_get(self, device: Device, request: Request, now: float) -> List[Action]:
        """GET /rpc with Observe: 0 subscribes to server-side RPCs, 1 cancels."""
        later = self.subscriptions.later_block(device.name, FEATURE, request,
                                               self.formats.of(device.type).content_format)
        if later is not None:
            return [later]
        if request.observe == 0:
            # connect the device so that the platform routes its RPCs here
            actions = self.devices.connect_if_needed(device, now)
            return actions + self.subscriptions.register(request, device.name, FEATURE,
                                                         codes.VALID, b"",
                                                         codes.APPLICATION_JSON, now)
        if request.observe == 1:
            self.subscriptions.deregister(request, device.name, FEATURE, now)
            return [Reply(request.ref, codes.VALID)]
        raise codes.BadRequest("GET /rpc needs Observe: 0 to subscribe, 1 to cancel")

    def on_post(self, device: Device, rpc_id: Any, request: Request, now: float) -> List[Action]:
        """POST /rpc (a client-side call) or /rpc/{id} (the reply to a server-side RPC)."""
        if rpc_id is None:
            return self._call(device, request, now)
        if rpc_id > routes.MAX_RPC_ID:
            raise codes.BadRequest("rpc reply: id %d is out of range (0 to %d)"
                                   % (rpc_id, routes.MAX_RPC_ID))
        message = self.formats.of(device.type).rpc_reply(device.name, rpc_id, request.payload)
        return self.uplinks.store(device, *message, request.ref, now)

    def _call(self, device: Device, request: Request, now: float) -> List[Action]:
        method, params = self.formats.of(device.type).rpc_call(request.payload)
        self._next_client_rpc += 1
        n = self._next_client_rpc
        body = {"method": self.settings.client_rpc_method,
                "params": {"device": device.name, "method": method, "params": params}}
        topic = GATEWAY_RPC_REQUEST_PREFIX + str(n)
        data = payloads.dumps(body)  # the gateway API's JSON, whatever the device's format
        self.uplinks.check_size(topic, data)
        self.shared.require_link()
        self.client_rpcs[n] = _ClientRpc(request.ref, device.name,
                                         now + self.settings.request_timeout, device.type)
        self.devices.touch(device.name, now)
        publish = Publish(next(self.shared.refs), topic, data, device.name)
        self.devices.track(publish.ref, device.name, now + self.puback_timeout)
        return [publish]

    # == the platform's messages =============================================

    def on_response(self, n: int, payload: bytes) -> List[Action]:
        """The platform's answer to client-side RPC ``n``."""
        call = self.client_rpcs.pop(n, None)
        if call is None:
            return []
        fmt = self.formats.of(call.device_type)
        return [Reply(call.request_ref, codes.CONTENT, fmt.rpc_result(payload),
                      fmt.content_format)]

    def on_server_rpc(self, rpc: ServerRpc, now: float) -> List[Action]:
        """Held for the device (waiting for an observer, or queued behind a CON notification)
        until ``rpc_queue_ttl`` after it arrived, at most ``rpc_queue_size`` per device."""
        item = _RpcItem(rpc, now + self.settings.rpc_queue_ttl)
        name = rpc.device
        size = self.settings.rpc_queue_size
        if self._held(name) >= size:
            self._expire(name, now)
            if self._held(name) >= size:
                self.stats["rpc_dropped"] += 1
                if name in self.full:
                    return []
                self.full.add(name)
                return [Log("warn", "RPC {rpc_id} for {device} dropped: {count:plural:RPC} already "
                            "wait for the device (platform.rpc_queue_size); more are dropped, "
                            "counted in rpc_dropped_total",
                            {"rpc_id": rpc.id, "device": name, "count": self._held(name)})]
        self.full.discard(name)
        if self.observers.get(name, FEATURE) is not None:
            return self._deliver(item, now)
        self.waiting.setdefault(name, deque()).append(item)
        return [Log("debug", "RPC {rpc_id} for {device} waits for an observer",
                    {"rpc_id": rpc.id, "device": name})]

    def on_gateway_rpc(self, doc: Any, now: float) -> List[Action]:
        """An RPC to the gateway itself: a device renamed or deleted on the platform."""
        if not isinstance(doc, dict):
            return []
        method, params = doc.get("method"), doc.get("params")
        if method == "gateway_device_renamed" and isinstance(params, dict):
            actions: List[Action] = []
            for old, new in params.items():
                if isinstance(new, str) and new:
                    self.renamed(old, new)
                    actions.append(RenameDevice(old, new))
            return actions
        if method == "gateway_device_deleted" and isinstance(params, str):
            return self.deleted(params)
        return [Log("info", "ignored gateway RPC {method!r}", {"method": method})]

    # == held RPCs ===========================================================

    def _deliver(self, item: _RpcItem, now: float) -> List[Action]:
        """The RPC to the device's observer, written in the device's format. One the format
        cannot carry (params that do not fit a PROTOBUF profile's RPC request schema) is
        answered to the platform with ThingsBoard's error, and the relation stays."""
        rpc = item.rpc
        fmt = self.formats.of_name(rpc.device)
        try:
            body = fmt.server_rpc(rpc.id, rpc.method, rpc.params)
        except CannotEncode as exc:
            return self._unencodable(rpc, str(exc), now)
        self.queued.add(rpc.device)
        return self.subscriptions.enqueue(
            rpc.device, FEATURE,
            Pending(body, codes.CONTENT, item, item.expires, fmt.content_format), now)

    def _unencodable(self, rpc: ServerRpc, reason: str, now: float) -> List[Action]:
        state = self.devices.get(rpc.device)
        if state is None:  # no session of the device to answer on: the platform times out
            return [Log("warn", "RPC {rpc_id} for {device} not sent: {reason}; the device "
                        "is not connected, so the platform's RPC times out",
                        {"rpc_id": rpc.id, "device": rpc.device, "reason": reason})]
        actions: List[Action] = [Log(
            "warn", "RPC {rpc_id} for {device} not sent: {reason}; the platform gets an error",
            {"rpc_id": rpc.id, "device": rpc.device, "reason": reason})]
        topic, body = gateway.rpc_reply(rpc.device, rpc.id, {"error": CONVERSION_ERROR})
        return actions + self.devices.publish(state.device, topic, body, now,
                                              now + self.puback_timeout)

    def _registered(self, name: str, now: float) -> List[Action]:
        """A relation of /rpc began: the RPCs waiting for it go to it, in order."""
        actions: List[Action] = []
        for item in self.waiting.pop(name, deque()):
            if item.expires > now:
                actions += self._deliver(item, now)
            else:
                self.expired.append(item)
        return actions

    def _held(self, name: str) -> int:
        """The RPCs held for ``name``: waiting for an observer, queued or in flight to it."""
        waiting = self.waiting.get(name)
        return (len(waiting) if waiting else 0) + self.observers.held(name, FEATURE)

    def _expire(self, name: str, now: float) -> None:
        """Forget the held RPCs of ``name`` that are past their time (counted by the tick)."""
        queue = self.waiting.get(name)
        while queue and queue[0].expires <= now:
            self.expired.append(queue.popleft())
        if queue is not None and not queue:
            del self.waiting[name]
        self.observers.expired += self.observers.purge(name, FEATURE, now)

    def _requeue(self, leftovers: List[Pending], now: float) -> None:
        """RPCs not yet acknowledged by the device wait for its next registration, in order,
        until their time is up: it runs from their arrival and does not start again, so no
        RPC is executed later than ``rpc_queue_ttl`` after the platform sent it."""
        items = [p.item for p in leftovers if isinstance(p.item, _RpcItem)]
        for item in reversed(items):
            if item.expires <= now:
                self.expired.append(item)
                continue
            queue = self.waiting.setdefault(item.rpc.device, deque())
            queue.appendleft(item)
            while len(queue) > self.settings.rpc_queue_size:  # cannot happen: kept as a bound
                queue.pop()
                self.stats["rpc_dropped"] += 1

    # == hooks ===============================================================

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        actions: List[Action] = []
        for n in [n for n, c in self.client_rpcs.items() if c.deadline <= now]:
            call = self.client_rpcs.pop(n)
            actions.append(Reply(call.request_ref, codes.GATEWAY_TIMEOUT,
                                 reason="the platform did not answer the RPC in time"))
        return actions + self._expired_logs(now, slow)

    def _expired_logs(self, now: float, slow: bool) -> List[Action]:
        """Count and log (one line per device) the RPCs that expired undelivered; once a
        second, take them out of the queues of observers too."""
        observers = self.observers
        for name in list(self.queued) if slow else ():
            if observers.held(name, FEATURE):
                observers.expired += observers.purge(name, FEATURE, now)
            else:
                self.queued.discard(name)
        if slow and self.full:  # dropping ended: the next drop is logged again
            self.full = {n for n in self.full if self._held(n) >= self.settings.rpc_queue_size}
        for name, queue in list(self.waiting.items()):
            while queue and queue[0].expires <= now:
                self.expired.append(queue.popleft())
            if not queue:
                del self.waiting[name]
        expired = self.expired + [p.item for p in observers.expired
                                  if isinstance(p.item, _RpcItem)]
        if not expired:
            return []
        self.expired, observers.expired = [], []
        self.stats["rpc_expired"] += len(expired)
        by_device: Dict[str, List[int]] = {}
        for item in expired:
            by_device.setdefault(item.rpc.device, []).append(item.rpc.id)
        return [_expired(ids, name, self.settings.rpc_queue_ttl)
                for name, ids in by_device.items()]

    def on_link_down(self, now: float) -> List[Action]:
        """Client-side RPCs waiting on the platform get 5.03."""
        actions: List[Action] = [unavailable(call.request_ref, "upstream connection lost")
                                 for call in self.client_rpcs.values()]
        self.client_rpcs.clear()
        return actions

    def rename(self, old: str, new: str) -> None:
        if old in self.waiting:
            self.waiting[new] = self.waiting.pop(old)
        for names in (self.queued, self.full):
            if old in names:
                names.discard(old)
                names.add(new)
        # RPCs carry the device name; the renamed device must still get them
        for item in self.waiting.get(new, ()):
            item.rpc = dataclasses.replace(item.rpc, device=new)
        for relation in self.observers.relations.values():
            if relation.device == new:
                pendings = list(relation.queue)
                if relation.in_flight is not None:
                    pendings.append(relation.in_flight[1])
                for pending in pendings:
                    if isinstance(pending.item, _RpcItem):
                        pending.item.rpc = dataclasses.replace(pending.item.rpc, device=new)

    def forget(self, name: str) -> List[Action]:
        self.waiting.pop(name, None)
        self.full.discard(name)
        return []


def _expired(ids: List[int], name: str, ttl: float) -> Log:
    """One line for the RPCs of device ``name`` that expired: their ids, the first ten."""
    if len(ids) == 1:
        return Log("info", "RPC {rpc_id} for {device} expired undelivered "
                   "(platform.rpc_queue_ttl {ttl:.0f} s)", {"rpc_id": ids[0], "device": name,
                                                             "ttl": ttl})
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return Log("info", "{count:plural:RPC} ({rpc_ids}) for {device} expired undelivered "
               "(platform.rpc_queue_ttl {ttl:.0f} s)",
               {"count": len(ids), "rpc_ids": shown, "device": name, "ttl": ttl})
