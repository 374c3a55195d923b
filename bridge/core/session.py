"""Gateway session state: which devices are connected upstream, and what waits for a PUBACK.

``GatewayCore`` is the pure heart of the bridge. Events go in (a CoAP request,
a PUBACK, the link going up or down, a timer tick) with ``now`` in seconds;
a list of ``Reply`` and ``Publish`` actions comes out.

Delivery rule until the durable outbox exists: a device gets 2.01 only after
the broker's PUBACK for its message; when the link is down, or the PUBACK
does not come within ``ack_timeout``, it gets 5.03 with Max-Age.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

from . import codes, gateway, payloads, routes
from .actions import Device, Publish, Reply, Request
from .codes import CoapError

Action = Union[Reply, Publish]
Lookup = Callable[[str], Optional[Device]]

# MQTT 5 PUBACK reason codes that mean the platform will not take the message.
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99


@dataclass(frozen=True)
class CoreSettings:
    ack_timeout: float = 10.0
    idle_timeout: float = 600.0
    max_packet_size: int = 65536
    mqtt5: bool = True
    retry_after: int = 5  # Max-Age hint (s) on 5.03


@dataclass
class _DeviceState:
    device: Device
    last_active: float
    connected: bool = False
    connect_ref: Optional[int] = None
    connect_deadline: float = 0.0
    waiting: List[Publish] = field(default_factory=list)


@dataclass
class _Pending:
    request_ref: int
    device: str
    deadline: float


class GatewayCore:
    def __init__(self, settings: CoreSettings, lookup: Lookup):
        self.settings = settings
        self.lookup = lookup
        self.link_up = False
        self.devices: Dict[str, _DeviceState] = {}
        self.pending: Dict[int, _Pending] = {}  # publish ref -> request waiting for its PUBACK
        self._next_ref = 0

    # -- events -------------------------------------------------------------

    def on_request(self, request: Request, now: float) -> List[Action]:
        try:
            return self._handle(request, now)
        except CoapError as err:
            return [_error_reply(request.ref, err)]

    def on_published(self, ref: int, reason_code: int, now: float) -> List[Action]:
        """The broker acknowledged publish ``ref``; ``reason_code`` >= 0x80 is a refusal."""
        for state in self.devices.values():
            if state.connect_ref == ref:
                return self._connect_done(state, reason_code < 0x80)
        pending = self.pending.pop(ref, None)
        if pending is None:
            return []  # answered already (timeout or link loss)
        if reason_code < 0x80:
            return [Reply(pending.request_ref, codes.CREATED)]
        return [_refusal_reply(pending.request_ref, reason_code, self.settings.retry_after)]

    def on_not_sent(self, ref: int, now: float) -> List[Action]:
        """The edge could not hand publish ``ref`` to the broker (the link just went away)."""
        for state in self.devices.values():
            if state.connect_ref == ref:
                state.connect_ref = None
                waiting, state.waiting = state.waiting, []
                return [self._unavailable(p.request_ref, "upstream broker not connected")
                        for p in (self.pending.pop(pub.ref, None) for pub in waiting) if p]
        pending = self.pending.pop(ref, None)
        if pending is None:
            return []
        return [self._unavailable(pending.request_ref, "upstream broker not connected")]

    def on_link_up(self, now: float) -> List[Action]:
        """The gateway connection is (re)established: re-connect recently active devices."""
        self.link_up = True
        actions: List[Action] = []
        horizon = now - self.settings.idle_timeout
        for name, state in list(self.devices.items()):
            if state.last_active >= horizon:
                actions.append(self._send_connect(state, now))
            else:
                del self.devices[name]
        return actions

    def on_link_down(self, now: float) -> List[Action]:
        """The connection is gone: everything unacknowledged is answered 5.03."""
        self.link_up = False
        actions: List[Action] = []
        for pending in self.pending.values():
            actions.append(self._unavailable(pending.request_ref, "upstream connection lost"))
        self.pending.clear()
        for state in self.devices.values():
            state.connected = False
            state.connect_ref = None
            state.waiting.clear()
        return actions

    def on_tick(self, now: float) -> List[Action]:
        actions: List[Action] = []
        expired = [ref for ref, p in self.pending.items() if p.deadline <= now]
        for ref in expired:
            pending = self.pending.pop(ref)
            state = self.devices.get(pending.device)
            if state is not None:
                state.waiting = [pub for pub in state.waiting if pub.ref != ref]
            actions.append(self._unavailable(pending.request_ref, "no PUBACK within ack_timeout"))
        for state in self.devices.values():
            if state.connect_ref is not None and state.connect_deadline <= now:
                state.connect_ref = None  # the next uplink sends connect again
        if self.link_up:
            horizon = now - self.settings.idle_timeout
            for name, state in list(self.devices.items()):
                if state.last_active >= horizon or state.connect_ref is not None \
                        or self._has_pending(name):
                    continue
                del self.devices[name]
                if state.connected:
                    topic, payload = gateway.disconnect(name)
                    actions.append(Publish(self._ref(), topic, payload, name))
        return actions

    def forget_device(self, name: str) -> None:
        self.devices.pop(name, None)

    # -- internals ----------------------------------------------------------

    def _handle(self, request: Request, now: float) -> List[Action]:
        route = routes.route(request.method, request.path)
        if route.feature == routes.PROVISION:
            raise codes.NotImplementedYet("provisioning is not available in this version")
        if route.feature in (routes.FIRMWARE, routes.SOFTWARE):
            raise codes.NotImplementedYet("OTA downloads are not available in this version")
        if route.token is None:
            raise codes.Unauthorized("missing access token")
        device = self.lookup(route.token)
        if device is None:
            raise codes.Unauthorized("unknown access token")
        topic, payload = self._uplink(route, request, device.name, now)
        return self._submit(device, topic, payload, request.ref, now)

    def _uplink(self, route: routes.Route, request: Request, name: str, now: float) -> gateway.Message:
        feature, post = route.feature, request.method == codes.POST
        if feature == routes.TELEMETRY:
            if not post:
                raise codes.BadRequest("telemetry cannot be read or observed")
            return gateway.telemetry(name, payloads.parse_telemetry(request.payload, int(now * 1000)))
        if feature == routes.ATTRIBUTES and post:
            return gateway.attributes(name, payloads.parse_attributes(request.payload))
        if feature == routes.CLAIM:
            if not post:
                raise codes.BadRequest("claim accepts POST only")
            return gateway.claim(name, payloads.parse_claim(request.payload))
        raise codes.NotImplementedYet("%s %s is not available in this version"
                                      % ("POST" if post else "GET", feature))

    def _submit(self, device: Device, topic: str, payload: bytes, request_ref: int,
                now: float) -> List[Action]:
        limit = self.settings.max_packet_size
        if gateway.publish_packet_size(topic, payload, self.settings.mqtt5) > limit:
            raise codes.EntityTooLarge("gateway message would exceed the platform's %d-byte limit"
                                       % limit, size1=limit)
        if not self.link_up:
            return [self._unavailable(request_ref, "upstream broker not connected")]
        state = self.devices.get(device.name)
        if state is None or state.device != device:
            state = self.devices[device.name] = _DeviceState(device, now)
        state.last_active = now
        publish = Publish(self._ref(), topic, payload, device.name)
        self.pending[publish.ref] = _Pending(request_ref, device.name, now + self.settings.ack_timeout)
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
        state.connect_ref = publish.ref
        state.connect_deadline = now + self.settings.ack_timeout
        return publish

    def _connect_done(self, state: _DeviceState, ok: bool) -> List[Action]:
        state.connect_ref = None
        waiting, state.waiting = state.waiting, []
        if ok:
            state.connected = True
            return [pub for pub in waiting if pub.ref in self.pending]
        actions: List[Action] = []
        for pub in waiting:
            pending = self.pending.pop(pub.ref, None)
            if pending is not None:
                actions.append(Reply(pending.request_ref, codes.BAD_GATEWAY,
                                     reason="platform refused the device connect"))
        return actions

    def _has_pending(self, name: str) -> bool:
        return any(p.device == name for p in self.pending.values())

    def _unavailable(self, request_ref: int, reason: str) -> Reply:
        return Reply(request_ref, codes.SERVICE_UNAVAILABLE, max_age=self.settings.retry_after,
                     reason=reason)

    def _ref(self) -> int:
        self._next_ref += 1
        return self._next_ref


def _error_reply(ref: int, err: CoapError) -> Reply:
    return Reply(ref, err.code, payload=err.reason.encode("utf-8"),
                 content_format=codes.TEXT_PLAIN if err.reason else None,
                 max_age=err.max_age, size1=err.size1, reason=err.reason)


def _refusal_reply(ref: int, reason_code: int, retry_after: int) -> Reply:
    if reason_code == QUOTA_EXCEEDED:
        return Reply(ref, codes.SERVICE_UNAVAILABLE, max_age=retry_after,
                     reason="platform quota exceeded (PUBACK 0x97)")
    if reason_code == PAYLOAD_FORMAT_INVALID:
        return Reply(ref, codes.BAD_REQUEST, reason="platform refused the payload (PUBACK 0x99)")
    return Reply(ref, codes.BAD_GATEWAY, reason="platform refused the message (PUBACK 0x%02x)" % reason_code)
