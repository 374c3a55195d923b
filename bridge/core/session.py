"""The gateway session: the pure heart of the bridge, as a facade over its parts.

``GatewayCore`` takes events (a CoAP request, the plain uplinks of a turn, an outbox
write's fate, a PUBACK, a downstream MQTT message, an observe notification's fate, the
link going up or down, a timer tick) with ``now`` in seconds, and returns actions (see
actions.py). Each concern is a part that owns its state (one module each):

* requests.py: route -> handler, after authentication (auth.py) and limits (limits.py)
* uplinks.py: admission and the accounting of uplinks being written; the bulk path
* outbox.py: stored entries, their delivery, PUBACKs, the backlog from before
* devices.py: connect gating, idle disconnect, publishes outside the outbox
* attributes.py, subscriptions.py: reads, observe, the platform's attribute pushes
* rpc.py: server-side RPC queues, client-side RPC, the gateway's rename/delete RPCs
* downloads.py: firmware and software packages; provision.py: provisioning admission
* efento.py: Efento's NB-IoT sensors on /efento/*
* power.py: power-saving modes (PSM, eDRX): when a sleeping device's downlinks may go
* messages.py: the platform's messages, by topic, to the part that owns them

A tick, the link going up or down, and the platform renaming or deleting a device fan
out to every part (``Part`` hooks in parts.py), in the order of ``parts``. A device's
payloads are read and written by its format (formats/), chosen by device type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .actions import DeleteDevice, Device, Entry, Request, Uplink
from .attributes import Attributes
from .auth import Authenticator, CredentialLookups, TokenLookup
from .codes import CoapError
from .devices import Devices
from .downloads import Downloads
from .efento import Efento
from .formats import FormatOf, Formats
from .formats.json import JsonFormat
from .limits import RequestLimits
from .messages import Messages
from .outbox import Outbox
from .parts import Action, Part, Shared, error_reply
from .power import PowerModes
from .provision import Provisioning
from .requests import Requests
from .routes import ATTRIBUTES
from .rpc import Rpc
from .subscriptions import Subscriptions
from .uplinks import Uplinks

if TYPE_CHECKING:
    from ..settings.root import Config

SLOW_TICK = 1.0  # seconds between the ticks that scan every device


class GatewayCore:
    def __init__(self, config: "Config", lookup: TokenLookup,
                 format_of: Optional[FormatOf] = None,
                 credentials: Optional[CredentialLookups] = None, fixed: Any = None,
                 efento: Any = None):
        """``lookup``: access token -> device. ``format_of``: device type -> its payload
        format (default: JSON for every type). ``credentials``: how DTLS credentials
        resolve (default: none does). ``fixed``: ThingsBoard's fixed protobuf messages
        (``formats.fixed.FixedMessages``), for provisioning requests that are not JSON
        (None: JSON only). ``efento``: Efento's compiled messages
        (``formats.efento_proto.EfentoMessages``; None: ``/efento/*`` answers 5.03)."""
        shared = self.shared = Shared(config)
        json = JsonFormat(config.limits.json_max_depth)
        self.formats = Formats(format_of or (lambda device_type: json), json)
        self.devices = Devices(shared)
        self.formats.type_of = self.devices.type_of
        self.subscriptions = Subscriptions(shared)
        self.auth = Authenticator(lookup, credentials)
        self.limits = RequestLimits(config.limits)
        self.provisioning = Provisioning(shared, fixed)
        self.outbox = Outbox(shared, self.devices)
        self.uplinks = Uplinks(shared, self.outbox, self.devices, self.auth, self.limits,
                               self.formats)
        self.attributes = Attributes(shared, self.devices, self.subscriptions, self.formats)
        self.downloads = Downloads(shared, self.attributes, self.limits, self.auth.token_of)
        self.rpc = Rpc(shared, self.devices, self.subscriptions, self.uplinks, self.formats)
        self.messages = Messages(config.limits.json_max_depth, self.devices, self.attributes,
                                 self.rpc)
        self.efento = Efento(self.auth, self.limits, self.uplinks, self.formats, efento)
        self.power = PowerModes(config)
        self.requests = Requests(self.auth, self.limits, self.provisioning, self.uplinks,
                                 self.attributes, self.rpc, self.downloads, self.efento,
                                 self.formats)
        self._wire()
        # every hook runs on every part, in this order (devices first: connects go before
        # the publishes that wait for them; the outbox last: it sends what is left room for)
        self.parts: Tuple[Part, ...] = (
            self.subscriptions, self.devices, self.attributes, self.downloads, self.rpc,
            self.auth, self.limits, self.provisioning, self.messages, self.efento, self.power,
            self.uplinks, self.outbox)
        self._next_slow_tick = 0.0

    def _wire(self) -> None:
        devices, outbox = self.devices, self.outbox
        devices.resume = outbox.delivery.resume
        devices.pump = outbox.pump
        devices.holds_entries = outbox.holds_entries
        devices.busy = [self.attributes.busy_devices, outbox.busy_devices]
        devices.observing = self.subscriptions.observing
        self.uplinks.learn_keys = self.attributes.learn_keys
        self._wire_power()
        self.rpc.renamed = self.rename
        self.rpc.deleted = self.delete

    def _wire_power(self) -> None:
        """Power saving (power.py): every request is heard, the observe queues ask it before
        each notification, attribute changes for a sleeping device are merged there."""
        power, subscriptions = self.power, self.subscriptions
        self.requests.heard = self.uplinks.heard = power.heard
        subscriptions.observers.gate = power
        subscriptions.acknowledged = power.acknowledged
        self.attributes.power = power
        power.woke = [self.attributes.send_held, subscriptions.wake]
        power.slept = subscriptions.sleep
        power.store = self.uplinks.store_own

    # == read-only views for metrics =========================================

    @property
    def stats(self) -> Dict[str, int]:
        """Counters of every part, summed by name (a copy: metrics read it)."""
        total: Dict[str, int] = {}
        for part in self.parts:
            for name, value in part.stats.items():
                total[name] = total.get(name, 0) + value
        return total

    def outbox_full(self, now: float) -> Optional[str]:
        """Which outbox bound refuses uplinks now (``outbox.max_entries`` ...), or None."""
        return self.uplinks.full(now)

    def gauges(self) -> Dict[str, int]:
        return {"outbox_entries": self.outbox.count, "outbox_bytes": self.outbox.bytes,
                "inflight_publishes": len(self.outbox.delivery.in_flight),
                "observers": len(self.subscriptions),
                "devices_connected": self.devices.connected_count(),
                "devices_asleep": self.power.asleep_count()}

    @property
    def link_up(self) -> bool:
        return self.shared.link_up

    @property
    def draining(self) -> bool:
        return self.outbox.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """Shutting down: publish no more stored entries."""
        self.outbox.draining = value

    # == events ==============================================================

    def on_request(self, request: Request, now: float) -> List[Action]:
        try:
            return self.requests.handle(request, now)
        except CoapError as err:
            return [error_reply(request.ref, err)]

    def on_uplinks(self, uplinks: List[Uplink], now: float) -> List[Action]:
        return self.uplinks.on_uplinks(uplinks, now)

    def on_stored(self, stored: List[Tuple[int, int]], now: float) -> List[Action]:
        return self.uplinks.on_stored(stored, now)

    def on_store_failed(self, store_refs: List[int], reason: str, now: float) -> List[Action]:
        return self.uplinks.on_store_failed(store_refs, reason, now)

    def on_update_failed(self, reason: str, now: float) -> List[Action]:
        return self.uplinks.on_update_failed(reason, now)

    def on_updated(self, now: float) -> List[Action]:
        return self.uplinks.on_updated(now)

    def on_backlog(self, count: int, size: int, now: float) -> List[Action]:
        """At start the outbox holds ``count`` entries (``size`` payload bytes) from before:
        read in slices (see outbox.py)."""
        return self.outbox.on_backlog(count, size, now)

    def on_restored(self, entries: List[Entry], now: float, more: bool = False) -> List[Action]:
        """Entries read from the outbox, in id order: the slice a ``LoadBacklog`` asked for
        (``more``: others may follow the last of them), or, without ``on_backlog``, all."""
        return self.outbox.on_restored(entries, now, more)

    def on_published(self, ref: int, reason_code: int, now: float) -> List[Action]:
        """The broker acknowledged publish ``ref``; ``reason_code`` >= 0x80 is a refusal."""
        actions = self.outbox.on_published(ref, reason_code, now)
        return actions if actions is not None else self.devices.on_published(ref, reason_code,
                                                                              now)

    def on_not_sent(self, ref: int, now: float) -> List[Action]:
        """The edge could not hand publish ``ref`` to the broker (the link just went away)."""
        if not self.outbox.on_not_sent(ref):
            self.devices.on_not_sent(ref)
        return []

    def on_message(self, topic: str, payload: bytes, now: float) -> List[Action]:
        """A message from the broker, on any topic (ThingsBoard pushes unsubscribed ones too)."""
        return self.messages.on_message(topic, payload, now)

    def on_notified(self, ref: int, outcome: str, now: float) -> List[Action]:
        """The fate of notification ``ref``: acknowledged ("ack"), delivered ("delivered":
        a NON sent, or written to a reliable connection), reset ("reset") or timed out
        ("timeout"); see bridge/coap/exchange.py."""
        return self.subscriptions.on_notified(ref, outcome, now)

    def on_peer_gone(self, remote: Any, now: float) -> List[Action]:
        """A DTLS session ended: its observe relations end (their items wait again)."""
        return self.subscriptions.on_peer_gone(remote, now)

    def observes(self, remote: Any) -> bool:
        """Whether ``remote`` (a DTLS session) observes anything: such a session is in use
        however long the device stays silent (its CON notifications show whether it is
        still there)."""
        return self.subscriptions.observers.observed_by(remote)

    def restore_relation(self, device: Device, feature: str, remote: Any, token: bytes,
                         observation: Any, block_size: int,
                         now: float) -> Optional[List[Action]]:
        """An observe relation of ``device`` that a process before this one held (a worker
        killed and restarted, or the bridge restarted), taken over as it was registered:
        the device is connected on the gateway session (now, or when the link comes up),
        and an observer of ``/attributes`` is sent its whole current view once it is
        fetched. None when there is no room for it (``coap.max_observers``)."""
        if not self.subscriptions.restore(device.name, feature, remote, token, observation,
                                          block_size):
            return None
        actions = self.devices.connect_if_needed(device, now)
        if feature == ATTRIBUTES:
            actions += self.attributes.restored(device.name, now)
        return actions

    def reconnect_device(self, name: str, now: float) -> List[Action]:
        """The device's own MQTT session (OTA download) evicted its gateway sub-session."""
        return self.devices.reconnect(name, now)

    # == fanned out to every part ============================================

    def on_link_up(self, now: float) -> List[Action]:
        """The gateway connection is (re)established: re-connect active and observing devices,
        refresh observed attributes, publish what is stored."""
        self.shared.link_up = True
        actions: List[Action] = []
        for part in self.parts:
            actions += part.on_link_up(now)
        return actions

    def on_link_down(self, now: float) -> List[Action]:
        """The connection is gone: what waits on the platform gets 5.03; stored uplinks in
        flight go back to their queues."""
        self.shared.link_up = False
        actions: List[Action] = []
        for part in self.parts:
            actions += part.on_link_down(now)
        return actions

    def on_tick(self, now: float) -> List[Action]:
        # Work that scans every device runs at most once a second: with 100,000 devices
        # it would otherwise eat the core's time at every tick.
        slow = now >= self._next_slow_tick
        if slow:
            self._next_slow_tick = now + SLOW_TICK
        actions: List[Action] = []
        for part in self.parts:
            actions += part.on_tick(now, slow)
        for part in self.parts:
            if self.shared.link_up:  # an overdue PUBACK takes it down (outbox.py)
                actions += part.on_tick_end(now, slow)
        return actions

    def rename(self, old: str, new: str) -> None:
        """The platform renamed device ``old`` (a gateway RPC): every part follows."""
        for part in self.parts:
            part.rename(old, new)

    def delete(self, name: str) -> List[Action]:
        """The platform deleted device ``name`` (a gateway RPC): every part forgets it."""
        actions: List[Action] = []
        for part in self.parts:
            actions += part.forget(name)
        return actions + [DeleteDevice(name)]
