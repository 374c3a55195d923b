"""Devices on the gateway session: connect gating, idle disconnect, publishes outside the outbox.

Every device-scoped publish is preceded by ``v1/gateway/connect`` and waits for its PUBACK,
so that the platform creates the device with its profile and routes its attributes and
RPCs to this connection. A refused connect is retried after ``RETRY_AFTER`` seconds; a
device silent for ``devices.idle_timeout`` (and with nothing in flight, stored or observed)
gets ``v1/gateway/disconnect``.

An observing device's connect is re-sent every half ``devices.idle_timeout`` (a claim):
ThingsBoard keeps one session per device and gives it to the gateway connection that
connected the device last, without telling the one it was taken from, and it drops a
sub-session silently after its inactivity timeout. A claim is a no-op on ThingsBoard
while this connection holds the session; otherwise it takes the session (and with it the
device's RPCs and attribute updates) back here. See docs/deployment.md, "Several
instances and ThingsBoard gateway sessions".

Publishes outside the outbox (attribute requests, client-side RPC) are tracked here until
their PUBACK or deadline; nobody waits for those PUBACKs: the answer comes on a response
topic, or the request's own deadline answers the device 5.04.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

from . import gateway
from .actions import Device, Log, Publish
from .parts import RETRY_AFTER, Action, Part, Shared


_NO_PUBLISHES = ()  # shared: most devices hold none, an empty list each is 56 bytes


class DeviceState:
    """A device on the gateway session. Slots: one per active or observing device (there
    may be 100,000), a dataclass's ``__dict__`` and its empty list cost 130 bytes more each."""

    __slots__ = ("device", "last_active", "connected", "connect_ref", "connect_deadline",
                 "waiting", "retry_at", "claimed_at")

    def __init__(self, device: Device, last_active: float) -> None:
        self.device = device
        self.last_active = last_active
        self.connected = False
        self.connect_ref: Optional[int] = None
        self.connect_deadline = 0.0
        # publishes held until the connect's PUBACK (a list once there is one)
        self.waiting: List[Publish] = _NO_PUBLISHES  # type: ignore[assignment]
        self.retry_at = 0.0  # after a refused connect
        self.claimed_at = 0.0  # the last connect acknowledged or claim sent

    def __repr__(self) -> str:
        return "DeviceState(%r, connected=%r)" % (self.device, self.connected)


@dataclass
class _Pending:
    """A publish outside the outbox waiting for its PUBACK (or its deadline)."""

    device: str
    deadline: float


class Devices(Part):
    def __init__(self, shared: Shared):
        super().__init__()
        self.shared = shared
        self.puback_timeout = shared.config.mqtt.puback_timeout
        self.idle_timeout = shared.config.devices.idle_timeout
        self.states: Dict[str, DeviceState] = {}
        self.pending: Dict[int, _Pending] = {}  # publish ref -> device, deadline
        self.connecting: Dict[int, str] = {}  # connect publish ref -> device
        self.claims: Dict[int, str] = {}  # claim (connect re-sent) publish ref -> device
        self.claim_interval = self.idle_timeout / 2
        # set by the facade (the outbox): stored entries of a device may go again (``resume``),
        # send what may go (``pump``), whether a device has stored entries (``holds_entries``)
        self.resume: Callable[[str], None] = lambda name: None
        self.pump: Callable[[float], List[Action]] = lambda now: []
        self.holds_entries: Callable[[str], bool] = lambda name: False
        # set by the facade: devices that must stay connected (stored, in flight, observed)
        self.busy: List[Callable[[], Iterable[str]]] = []
        self.observing: Callable[[], Iterable[str]] = lambda: ()

    def get(self, name: str) -> Optional[DeviceState]:
        return self.states.get(name)

    def type_of(self, name: str) -> Optional[str]:
        state = self.states.get(name)
        return state.device.type if state is not None else None

    def connected_count(self) -> int:
        return sum(1 for s in self.states.values() if s.connected)

    def state(self, device: Device, now: float) -> DeviceState:
        """The state of ``device`` (a new one for a new device, or one of another type)."""
        state = self.states.get(device.name)
        if state is None or state.device != device:
            state = self.states[device.name] = DeviceState(device, now)
        return state

    def touch(self, name: str, now: float) -> None:
        state = self.states.get(name)
        if state is not None:
            state.last_active = now

    def track(self, ref: int, name: str, deadline: float) -> None:
        """Publish ``ref`` (outside the outbox) keeps ``name`` busy until its PUBACK."""
        self.pending[ref] = _Pending(name, deadline)

    def publish(self, device: Device, topic: str, payload: bytes, now: float,
                deadline: float) -> List[Action]:
        """Publish for ``device``, after its ``v1/gateway/connect`` has been acknowledged."""
        state = self.state(device, now)
        state.last_active = now
        publish = Publish(next(self.shared.refs), topic, payload, device.name)
        self.pending[publish.ref] = _Pending(device.name, deadline)
        if state.connected:
            return [publish]
        if state.waiting:
            state.waiting.append(publish)
        else:
            state.waiting = [publish]
        if state.connect_ref is None:
            return [self.connect(state, now)]
        return []

    def connect_if_needed(self, device: Device, now: float) -> List[Action]:
        """Connect ``device`` (when the link is up) so that the platform routes its RPCs here."""
        state = self.states.setdefault(device.name, DeviceState(device, now))
        if self.shared.link_up and not state.connected and state.connect_ref is None:
            return [self.connect(state, now)]
        return []

    def blocked(self, name: str, device_type: str, now: float, actions: List[Action]) -> bool:
        """Whether stored entries of ``name`` must wait (for a connect, sent to ``actions``)."""
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = DeviceState(Device(name, device_type), now)
        if state.connected:
            return False
        if state.connect_ref is None and state.retry_at <= now:
            actions.append(self.connect(state, now))
        return True  # parked until the connect is done

    def connect(self, state: DeviceState, now: float) -> Publish:
        topic, payload = gateway.connect(state.device.name, state.device.type)
        publish = Publish(next(self.shared.refs), topic, payload, state.device.name)
        state.connected = False
        if state.connect_ref is not None:
            self.connecting.pop(state.connect_ref, None)
        state.connect_ref = publish.ref
        self.connecting[publish.ref] = state.device.name
        state.connect_deadline = now + self.puback_timeout
        return publish

    def reconnect(self, name: str, now: float) -> List[Action]:
        """The device's own MQTT session (OTA download) evicted its gateway sub-session."""
        state = self.states.get(name)
        if state is None or not self.shared.link_up:
            return []
        return [self.connect(state, now)]

    def on_published(self, ref: int, reason_code: int, now: float) -> List[Action]:
        claimed = self.claims.pop(ref, None)
        if claimed is not None and reason_code >= 0x80:
            self.pending.pop(ref, None)
            return self._claim_refused(claimed)
        name = self.connecting.get(ref)
        state = self.states.get(name) if name is not None else None
        if state is not None and state.connect_ref == ref:
            return self._connect_done(state, reason_code < 0x80, now)
        self.connecting.pop(ref, None)
        self.pending.pop(ref, None)
        return []

    def _connect_done(self, state: DeviceState, ok: bool, now: float) -> List[Action]:
        self.connecting.pop(state.connect_ref, None)  # type: ignore[arg-type]
        state.connect_ref = None
        waiting, state.waiting = state.waiting, _NO_PUBLISHES  # type: ignore[assignment]
        if ok:
            state.connected = True
            state.claimed_at = now
            self.resume(state.device.name)
            return [pub for pub in waiting if pub.ref in self.pending] + self.pump(now)
        state.retry_at = now + RETRY_AFTER
        for pub in waiting:
            self.pending.pop(pub.ref, None)  # their fetches answer at their deadline
        return [Log("warn", "the platform refused to connect device {device}",
                    {"device": state.device.name})]

    def on_not_sent(self, ref: int) -> None:
        self.claims.pop(ref, None)
        name = self.connecting.pop(ref, None)
        state = self.states.get(name) if name is not None else None
        if state is not None and state.connect_ref == ref:
            state.connect_ref = None
            for pub in state.waiting:
                self.pending.pop(pub.ref, None)
            state.waiting = _NO_PUBLISHES  # type: ignore[assignment]
        self.pending.pop(ref, None)

    def on_disconnected(self, doc: Any) -> List[Action]:
        """The platform closed a device's session (``v1/gateway/disconnect``)."""
        name = doc.get("device") if isinstance(doc, dict) else None
        state = self.states.get(name) if isinstance(name, str) else None
        if state is None:
            return []
        state.connected = False
        return [Log("info", "the platform closed the session of {device} (reason {reason})",
                    {"device": name, "reason": doc.get("reason")})]

    def on_link_up(self, now: float) -> List[Action]:
        """Re-connect active and observing devices; forget the others with nothing stored."""
        actions: List[Action] = []
        horizon = now - self.idle_timeout
        observing = set(self.observing())
        for name, state in list(self.states.items()):
            if state.last_active >= horizon or name in observing:
                actions.append(self.connect(state, now))
            elif not self.holds_entries(name):
                del self.states[name]
        return actions

    def on_link_down(self, now: float) -> List[Action]:
        self.pending.clear()
        self.connecting.clear()
        self.claims.clear()
        for state in self.states.values():
            state.connected = False
            state.connect_ref = None
            state.waiting = _NO_PUBLISHES  # type: ignore[assignment]
        return []

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        for ref in [ref for ref, p in self.pending.items() if p.deadline <= now]:
            pending = self.pending.pop(ref)
            self.claims.pop(ref, None)
            state = self.states.get(pending.device)
            if state is not None:
                state.waiting = [pub for pub in state.waiting if pub.ref != ref]
        for name, state in self.states.items() if slow else ():
            if state.connect_ref is not None and state.connect_deadline <= now:
                self.connecting.pop(state.connect_ref, None)
                state.connect_ref = None  # the next publish sends connect again
            if not state.connected and state.connect_ref is None and state.retry_at <= now:
                self.resume(name)  # its stored entries wait for a new connect
        return []

    def on_tick_end(self, now: float, slow: bool) -> List[Action]:
        return self._disconnect_idle(now) + self._claim_observed(now) if slow else []

    def _claim_observed(self, now: float) -> List[Action]:
        """Re-send connect for each connected observing device not claimed for a while."""
        actions: List[Action] = []
        horizon = now - self.claim_interval
        for name in self.observing():
            state = self.states.get(name)
            if state is None or not state.connected or state.claimed_at > horizon:
                continue
            state.claimed_at = now
            topic, payload = gateway.connect(name, state.device.type)
            publish = Publish(next(self.shared.refs), topic, payload, name)
            self.claims[publish.ref] = name
            self.pending[publish.ref] = _Pending(name, now + self.puback_timeout)
            actions.append(publish)
        return actions

    def _claim_refused(self, name: str) -> List[Action]:
        state = self.states.get(name)
        if state is not None:
            state.connected = False  # what it sends next waits for a connect again
        return [Log("warn", "the platform refused to connect device {device} again",
                    {"device": name})]

    def _disconnect_idle(self, now: float) -> List[Action]:
        actions: List[Action] = []
        horizon = now - self.idle_timeout
        busy = {p.device for p in self.pending.values()}
        for source in self.busy:
            busy.update(source())
        busy.update(self.observing())
        for name, state in list(self.states.items()):
            if state.last_active >= horizon or state.connect_ref is not None or name in busy:
                continue
            del self.states[name]
            if state.connected:
                topic, payload = gateway.disconnect(name)
                actions.append(Publish(next(self.shared.refs), topic, payload, name))
        return actions

    def rename(self, old: str, new: str) -> None:
        state = self.states.pop(old, None)
        if state is not None:
            state.device = Device(new, state.device.type)
            self.states[new] = state
            if state.connect_ref is not None:
                self.connecting[state.connect_ref] = new
            for ref, claimed in list(self.claims.items()):
                if claimed == old:
                    self.claims[ref] = new

    def forget(self, name: str) -> List[Action]:
        self.states.pop(name, None)
        return []
