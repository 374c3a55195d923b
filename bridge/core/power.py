"""Power-saving modes (PSM, DRX, eDRX) as ThingsBoard's CoAP transport applies them.

Cellular devices sleep. ThingsBoard (``DefaultCoapClientContext``, ``TbCoapClientState``)
knows each device's power mode, from the device's own transport configuration or else its
profile's ``clientSettings`` (``powerMode``, ``psmActivityTimer``,
``pagingTransmissionWindow``, ``edrxCycle``, in ms), and holds downlinks while it sleeps:

* DRX, or no mode: downlinks go at any time (as for every device before).
* PSM: only within ``psmActivityTimer`` (0 or none: ``coap.psm_activity_timer``, 10 s)
  after the device's last request of any kind (an ACK of a notification counts too).
* eDRX: within ``pagingTransmissionWindow`` (``coap.paging_transmission_window``, 10 s)
  after the last request; after it, the first downlink still goes (the device hears it at
  its next paging occasion) and the others wait for the next request. ``edrxCycle`` is
  kept, and unused, as in ThingsBoard's CoAP transport.

Outside its window a device is asleep. What the platform sends meanwhile waits: server
RPCs in the observe relation's queue (within ``platform.rpc_queue_size`` and
``rpc_queue_ttl``, as ever), attribute changes merged into one pending change (``merge``:
a later value of a key replaces the earlier, a deletion removes it, ``{"k": v, ...,
"deleted": [...]}`` as ThingsBoard merges them); both go at the device's next request.
When a PSM device falls asleep with a CON notification unacknowledged, its retransmissions
stop (``Withdraw``: a sleeping device hears nothing) and the notification waits for the
next request; a CON notification that times out while its device sleeps (eDRX) waits the
same way, and the device's observe relations stay.

This part owns the per-device state and timers and answers the other parts through a few
narrow calls: ``may_send`` (the observe queues' gate, before each notification),
``holds`` and ``merge`` (attribute changes), ``heard`` (every request). Transitions are
counted (``power_asleep``, ``power_awake``) and, with ``coap.transport_log``, written as
the device's telemetry ``transportLog`` ("Info: Client is sleeping!" / "Info: Client is
awake!"), as ThingsBoard writes them.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from . import gateway
from .actions import Device, PowerSettings
from .parts import Action, Part
from .payloads import TelemetryEntry

if TYPE_CHECKING:
    from ..settings.root import Config

PSM, DRX, E_DRX = "PSM", "DRX", "E_DRX"
MODES = (PSM, DRX, E_DRX)
ASLEEP_TEXT, AWAKE_TEXT = "Info: Client is sleeping!", "Info: Client is awake!"
TRANSPORT_LOG = "transportLog"
_NOTHING: Tuple[Action, ...] = ()

Mode = Tuple[str, float]  # (PSM or E_DRX, the window in seconds)


class _Sleeper:
    """A PSM or eDRX device the bridge has heard from."""

    __slots__ = ("device", "mode", "window", "last", "asleep", "first", "held", "merged",
                 "deleted")

    def __init__(self, device: Device, mode: Mode, now: float):
        self.device = device
        self.mode, self.window = mode
        self.last = now
        self.asleep = False
        self.first = True  # eDRX: the first downlink after the window may go
        self.held = False  # a downlink waits for the device
        self.merged: Optional[Dict[str, Any]] = None  # attribute changes held
        self.deleted: Optional[Dict[str, None]] = None  # attribute names deleted meanwhile


def profile_power(client: Any) -> PowerSettings:
    """A profile's ``clientSettings`` (settings.profiles.ClientSettings: 0 and empty for
    not given) as the power settings the core reads."""
    return PowerSettings(client.powerMode or None, client.psmActivityTimer or None,
                         client.edrxCycle or None, client.pagingTransmissionWindow or None)


def merge(merged: Dict[str, Any], deleted: Dict[str, None], data: Dict[str, Any]) -> None:
    """Merge the attribute change ``data`` into those held: per key, the last change wins
    (ThingsBoard's ``addQueuedNotification``, which also keeps the deletions of earlier
    changes: its own loses them)."""
    for key, value in data.items():
        if key != "deleted":
            merged[key] = value
            deleted.pop(key, None)
    names = data.get("deleted")
    if type(names) is list:
        for key in names:
            if type(key) is str:
                merged.pop(key, None)
                deleted[key] = None


class PowerModes(Part):
    def __init__(self, config: "Config"):
        super().__init__()
        coap = config.coap
        self.psm_default = coap.psm_activity_timer
        self.paging_default = coap.paging_transmission_window
        self.transport_log = coap.transport_log
        self.profiles: Dict[str, PowerSettings] = {
            device_type: profile_power(profile.clientSettings)
            for device_type, profile in config.device_profiles.items()
            if profile.clientSettings.powerMode}
        self.sleepers: Dict[str, _Sleeper] = {}
        self._deadlines: List[Tuple[float, str]] = []  # (end of a window, device), a heap
        self._modes: Dict[Tuple[str, Optional[PowerSettings]], Optional[Mode]] = {}
        self._log_count = 0
        # set by the facade: a device woke with downlinks held (send them), a PSM device
        # fell asleep (stop its CON retransmissions), the bridge's own telemetry of a device
        self.woke: List[Callable[[str, float], List[Action]]] = []
        self.slept: Callable[[str, float], List[Action]] = lambda name, now: []
        self.store: Callable[[Device, str, bytes, float], List[Action]] = \
            lambda device, topic, payload, now: []
        self.stats = {"power_asleep": 0, "power_awake": 0}

    # == what a device's mode is ===============================================

    def mode_of(self, device: Device) -> Optional[Mode]:
        """(PSM or E_DRX, its window in seconds), or None for DRX and no mode."""
        key = (device.type, device.power)
        if key in self._modes:
            return self._modes[key]
        mode = self._modes[key] = self._resolve(device)
        return mode

    def _resolve(self, device: Device) -> Optional[Mode]:
        own = device.power or PowerSettings()
        profile = self.profiles.get(device.type) or PowerSettings()
        kind = own.mode or profile.mode
        if kind == PSM:
            ms = own.psm_activity_timer or profile.psm_activity_timer
            return PSM, ms / 1000.0 if ms else self.psm_default
        if kind == E_DRX:
            ms = own.paging_transmission_window or profile.paging_transmission_window
            return E_DRX, ms / 1000.0 if ms else self.paging_default
        return None

    # == the narrow calls ======================================================

    def heard(self, device: Device, now: float) -> Any:
        """``device`` made a request (of any kind): its window starts again; if it slept,
        or downlinks wait for it, they go now. Returns the actions (a tuple when none)."""
        sleeper = self.sleepers.get(device.name)
        if sleeper is None and device.power is None and device.type not in self.profiles:
            return _NOTHING  # the common case: DRX or no mode, and never was otherwise
        mode = self.mode_of(device)
        if mode is None:  # no longer PSM or eDRX: as any device, with what it held sent
            if sleeper is None:
                return _NOTHING
            del self.sleepers[device.name]
            return self._release(sleeper, now) if sleeper.held else _NOTHING
        if sleeper is None:
            sleeper = self.sleepers[device.name] = _Sleeper(device, mode, now)
        sleeper.device = device
        sleeper.mode, sleeper.window = mode
        return self._awake(sleeper, now)

    def acknowledged(self, name: str, now: float) -> List[Action]:
        """The device acknowledged a notification: it is awake (ThingsBoard counts it)."""
        sleeper = self.sleepers.get(name)
        return list(self._awake(sleeper, now)) if sleeper is not None else []

    def may_send(self, name: str, now: float, take: bool = True) -> bool:
        """May a downlink go to ``name`` now? With ``take`` (the observe queues' gate, once
        per notification sent), an eDRX device's one downlink after its window is used up;
        a refusal marks the device as waited for."""
        sleeper = self.sleepers.get(name)
        if sleeper is None or now - sleeper.last <= sleeper.window:
            return True
        if sleeper.mode == E_DRX and sleeper.first:
            if take:
                sleeper.first = False
            return True
        if take:
            sleeper.held = True
        return False

    def asleep(self, name: str, now: float) -> bool:
        """Whether ``name`` is past its window (PSM or eDRX): unreachable now."""
        sleeper = self.sleepers.get(name)
        return sleeper is not None and now - sleeper.last > sleeper.window

    def hold(self, name: str) -> None:
        """A notification to ``name`` waits for its next request."""
        sleeper = self.sleepers.get(name)
        if sleeper is not None:
            sleeper.held = True

    def holds(self, name: str, now: float) -> bool:
        """Whether an attribute change for ``name`` waits (is merged) rather than goes."""
        return not self.may_send(name, now, take=False)

    def merge(self, name: str, data: Dict[str, Any]) -> None:
        """An attribute change for the sleeping ``name``: merged into what it holds."""
        sleeper = self.sleepers[name]
        if sleeper.merged is None:
            sleeper.merged, sleeper.deleted = {}, {}
        merge(sleeper.merged, sleeper.deleted, data)  # type: ignore[arg-type]
        sleeper.held = True

    def take_merged(self, name: str) -> Optional[Dict[str, Any]]:
        """The attribute change held for ``name`` (once), or None."""
        sleeper = self.sleepers.get(name)
        if sleeper is None or sleeper.merged is None:
            return None
        change, deleted = sleeper.merged, sleeper.deleted
        sleeper.merged = sleeper.deleted = None
        if deleted:
            change["deleted"] = list(deleted)
        return change or None

    # == transitions ===========================================================

    def _awake(self, sleeper: _Sleeper, now: float) -> Any:
        sleeper.last = now
        sleeper.first = True
        heapq.heappush(self._deadlines, (now + sleeper.window, sleeper.device.name))
        actions: List[Action] = []
        if sleeper.asleep:
            sleeper.asleep = False
            self.stats["power_awake"] += 1
            actions += self._log(sleeper, AWAKE_TEXT, now)
        if sleeper.held:
            actions += self._release(sleeper, now)
        return actions or _NOTHING

    def _release(self, sleeper: _Sleeper, now: float) -> List[Action]:
        sleeper.held = False
        actions: List[Action] = []
        for wake in self.woke:
            actions += wake(sleeper.device.name, now)
        return actions

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        """Devices whose window ended fall asleep (their last request and window decide:
        an entry of the heap that a later request superseded is skipped)."""
        actions: List[Action] = []
        heap = self._deadlines
        while heap and heap[0][0] < now:
            deadline, name = heapq.heappop(heap)
            sleeper = self.sleepers.get(name)
            if sleeper is None or sleeper.asleep or sleeper.last + sleeper.window != deadline:
                continue
            sleeper.asleep = True
            self.stats["power_asleep"] += 1
            actions += self._log(sleeper, ASLEEP_TEXT, now)
            if sleeper.mode == PSM:
                actions += self.slept(name, now)
        return actions

    def _log(self, sleeper: _Sleeper, text: str, now: float) -> List[Action]:
        """ThingsBoard's ``transportLog`` telemetry of the transition, when enabled: its time
        is the second, plus a counter's milliseconds that keep two entries apart."""
        if not self.transport_log:
            return []
        self._log_count += 1
        ts = int(now) * 1000 + self._log_count % 1000
        device = sleeper.device
        return self.store(device, *gateway.telemetry(device.name, [TelemetryEntry(
            ts, {TRANSPORT_LOG: text})]), now)

    def asleep_count(self) -> int:
        return sum(1 for sleeper in self.sleepers.values() if sleeper.asleep)

    # == hooks =================================================================

    def rename(self, old: str, new: str) -> None:
        sleeper = self.sleepers.pop(old, None)
        if sleeper is not None:
            sleeper.device = Device(new, sleeper.device.type, sleeper.device.power)
            self.sleepers[new] = sleeper
            heapq.heappush(self._deadlines, (sleeper.last + sleeper.window, new))

    def forget(self, name: str) -> List[Action]:
        self.sleepers.pop(name, None)
        return []
