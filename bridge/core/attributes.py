"""Attributes: reads, observe of shared attributes, and the platform's updates.

A read (GET /attributes?clientKeys=..&sharedKeys=..) becomes one or more attribute
requests on ``v1/gateway/attributes/request`` (a ``Fetch``), answered 2.05 when every
response is in, 5.04 at ``platform.request_timeout``. An observe starts with a fetch of
every shared attribute (its first representation); the platform's pushes on
``v1/gateway/attributes`` then go to the observer, and after a reconnect the view is
fetched again and what changed meanwhile is notified. Other parts fetch through
``start_fetch`` too (downloads read the package attributes) and watch the pushes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codes, gateway, payloads, routes
from .actions import Device, Log, Reply, Request
from .devices import Devices
from .downstream import AttributeUpdate, keys_param
from .formats import Formats, PayloadFormat
from .observe import Pending
from .parts import Action, Part, Shared, unavailable
from .subscriptions import Subscriptions

FEATURE = routes.ATTRIBUTES
CLIENT, SHARED, DISCOVER = "client", "shared", "discover"
MAX_KNOWN_KEYS = 1000
_MISSING = object()
# the view of every device with no shared attributes: views are replaced, never changed in
# place (``AttributeUpdate.apply`` returns a new one), so one empty dict serves them all
# (64 bytes per observer of 100,000 otherwise)
_NO_ATTRIBUTES: Dict[str, Any] = {}


@dataclass
class Fetch:
    """Reading attributes from the platform: for a GET, an observe start, or a refresh."""

    purpose: str  # "read", "observe", "refresh", or another part's ("ota")
    device: str
    request: Optional[Request]
    client_keys: Optional[List[str]]  # None: not wanted; []: all
    shared_keys: Optional[List[str]]
    deadline: float
    format: PayloadFormat
    done: Optional[Callable[["Fetch"], List[Action]]] = None  # another part's: it answers
    client: Dict[str, Any] = field(default_factory=dict)
    shared: Dict[str, Any] = field(default_factory=dict)
    outstanding: Set[int] = field(default_factory=set)
    pushes: List[AttributeUpdate] = field(default_factory=list)


class Attributes(Part):
    def __init__(self, shared: Shared, devices: Devices, subscriptions: Subscriptions,
                 formats: Formats):
        super().__init__()
        self.shared = shared
        self.devices = devices
        self.subscriptions = subscriptions
        self.formats = formats
        self.request_timeout = shared.config.platform.request_timeout
        self.views: Dict[str, Dict[str, Any]] = {}  # device -> shared attributes observed
        self.known_keys: Dict[str, Set[str]] = {}  # device -> attribute names seen
        self.fetches: Dict[int, Fetch] = {}
        self.requests: Dict[int, Tuple[int, str, List[str]]] = {}  # id -> fetch, scope, keys
        self.watchers: List[Callable[[AttributeUpdate], None]] = []  # of the platform's pushes
        self.power: Any = None  # power saving (power.py): holds changes for sleeping devices
        # observers taken over from a process before this one: what they were last sent is
        # unknown, so their first refresh notifies the whole view
        self.unknown_views: Set[str] = set()
        self._next_id = 0

    # == the device API ======================================================

    def on_get(self, device: Device, request: Request, now: float) -> List[Action]:
        fmt = self.formats.of(device.type)
        if not request.query:
            later = self.subscriptions.later_block(device.name, FEATURE, request,
                                                   fmt.content_format)
            if later is not None:
                return [later]
        if request.observe == 0:
            self.shared.require_link()
            return self.start_fetch("observe", device.name, request, None, [], now, device)
        if request.observe == 1:
            self.subscriptions.deregister(request, device.name, FEATURE, now)
        query = payloads.split_query(request.query)
        client_keys = keys_param(query.get("clientKeys"))
        shared_keys = keys_param(query.get("sharedKeys"))
        if client_keys is None and shared_keys is None:
            client_keys, shared_keys = [], []  # no keys: all client and all shared attributes
        self.shared.require_link()
        return self.start_fetch("read", device.name, request, client_keys, shared_keys, now,
                                device)

    # == fetches =============================================================

    def start_fetch(self, purpose: str, name: str, request: Optional[Request],
                    client_keys: Optional[List[str]], shared_keys: Optional[List[str]],
                    now: float, device: Optional[Device] = None,
                    done: Optional[Callable[[Fetch], List[Action]]] = None) -> List[Action]:
        """Ask the platform for attributes of ``name`` ([]: all of the scope). ``done``
        answers when every response is in (by default, per ``purpose``)."""
        if device is None:
            state = self.devices.get(name)
            if state is None:
                return []
            device = state.device
        fetch_id = next(self.shared.refs)
        fetch = Fetch(purpose, name, request, client_keys, shared_keys,
                      now + self.request_timeout, self.formats.of(device.type), done)
        self.fetches[fetch_id] = fetch
        actions: List[Action] = []
        if client_keys == [] or shared_keys == []:
            # The gateway API has no scoped "all": "keys": [] answers client and shared
            # attributes merged, so learn the names first, then ask each scope for them.
            actions += self._ask(fetch_id, fetch, device, DISCOVER, [], now)
        for scope, keys in ((CLIENT, client_keys), (SHARED, shared_keys)):
            if keys:
                actions += self._ask(fetch_id, fetch, device, scope, keys, now)
        return actions

    def _ask(self, fetch_id: int, fetch: Fetch, device: Device, scope: str,
             keys: List[str], now: float) -> List[Action]:
        self._next_id += 1
        request_id = self._next_id
        self.requests[request_id] = (fetch_id, scope, keys)
        fetch.outstanding.add(request_id)
        body: Dict[str, Any] = {"id": request_id, "device": device.name, "client": scope == CLIENT}
        if len(keys) == 1:
            body["key"] = keys[0]
        else:
            body["keys"] = keys
        return self.devices.publish(device, gateway.ATTRIBUTES_REQUEST,
                                    payloads.dumps(body), now, fetch.deadline)

    def on_response(self, response: Any, now: float) -> List[Action]:
        """A message on ``v1/gateway/attributes/response``."""
        entry = self.requests.pop(response.id, None)
        fetch = self.fetches.get(entry[0]) if entry is not None else None
        if entry is None or fetch is None:
            return []
        fetch_id, scope, keys = entry
        fetch.outstanding.discard(response.id)
        values = response.values(keys)
        actions: List[Action] = []
        if scope == DISCOVER:
            if values is None:
                # ThingsBoard answers "keys": [] with a bare "value" when it finds exactly
                # one attribute; ask for every name this device is known to use instead.
                values = dict.fromkeys(self.known_keys.get(fetch.device, ()))
                if not values:
                    return self._unnamed(fetch_id, fetch, now)
            names = sorted(values)
            state = self.devices.get(fetch.device)
            if names and state is not None:
                for wanted, scoped in ((fetch.client_keys, CLIENT), (fetch.shared_keys, SHARED)):
                    if wanted == []:
                        actions += self._ask(fetch_id, fetch, state.device, scoped, names, now)
        elif values is None:
            return self._failed(fetch_id, "the platform's attribute response is ambiguous",
                                codes.BAD_GATEWAY)
        elif scope == CLIENT:
            fetch.client.update(values)
        else:
            fetch.shared.update(values)
        self.learn_keys(fetch.device, values)
        if not fetch.outstanding:
            del self.fetches[fetch_id]
            actions += fetch.done(fetch) if fetch.done is not None else self._done(fetch, now)
        return actions

    def _unnamed(self, fetch_id: int, fetch: Fetch, now: float) -> List[Action]:
        """The platform hid the name of the only attribute, and no name is known."""
        if fetch.purpose == "read":
            return self._failed(fetch_id, "the platform answered a keys-less attribute request "
                                "with an unnamed value", codes.BAD_GATEWAY)
        # an observer still gets every change from now on
        del self.fetches[fetch_id]
        fetch.shared = dict(self.views.get(fetch.device, {}))
        return [Log("warn", "the platform hid the name of {device}'s only attribute; observing "
                    "from the last known view", {"device": fetch.device})] \
            + self._done(fetch, now)

    def _done(self, fetch: Fetch, now: float) -> List[Action]:
        fmt = fetch.format
        if fetch.purpose == "read":
            assert fetch.request is not None
            if not fetch.client and not fetch.shared:
                return [Reply(fetch.request.ref, codes.NOT_FOUND, reason="no such attributes")]
            return [Reply(fetch.request.ref, codes.CONTENT,
                          fmt.attributes_response(fetch.client, fetch.shared, now),
                          fmt.content_format)]
        view = fetch.shared
        for update in fetch.pushes:
            view = update.apply(view)
        old = self.views.get(fetch.device)
        self.views[fetch.device] = view or _NO_ATTRIBUTES
        if fetch.purpose == "observe":
            return self.subscriptions.register(fetch.request, fetch.device, FEATURE,
                                               codes.CONTENT, fmt.attribute_update(view, now),
                                               fmt.content_format, now)
        # refresh after a reconnect: tell the observer what changed meanwhile
        if old is None:
            if fetch.device not in self.unknown_views:
                return []
            old = {}  # a restored observer: everything, it may have missed any change
        self.unknown_views.discard(fetch.device)
        delta: Dict[str, Any] = {k: v for k, v in view.items() if old.get(k, _MISSING) != v}
        deleted = [k for k in old if k not in view]
        if deleted:
            delta["deleted"] = deleted
        if not delta:
            return []
        return self.subscriptions.enqueue(fetch.device, FEATURE, self._pending(fmt, delta, now),
                                          now)

    def _failed(self, fetch_id: int, reason: str,
                code: int = codes.GATEWAY_TIMEOUT) -> List[Action]:
        fetch = self.fetches.pop(fetch_id)
        for request_id in fetch.outstanding:
            self.requests.pop(request_id, None)
        if fetch.request is None:
            return [Log("warn", "could not refresh the shared attributes of {device}: {reason}",
                        {"device": fetch.device, "reason": reason})]
        return [Reply(fetch.request.ref, code, reason=reason)]

    def learn_keys(self, device: str, values: Dict[str, Any]) -> None:
        if not values:
            return
        known = self.known_keys.setdefault(device, set())
        if len(known) < MAX_KNOWN_KEYS:
            known.update(k for k in values if k != "deleted")

    # == the platform's pushes ===============================================

    def on_update(self, update: AttributeUpdate, now: float) -> List[Action]:
        """A message on ``v1/gateway/attributes``: shared attributes changed."""
        self.learn_keys(update.device, update.data)
        for watcher in self.watchers:
            watcher(update)
        if update.device in self.views:
            self.views[update.device] = update.apply(self.views[update.device])
        for fetch in self.fetches.values():
            if fetch.device == update.device and fetch.purpose != "read":
                fetch.pushes.append(update)
        power = self.power
        if power is not None and power.holds(update.device, now) \
                and self.subscriptions.observers.get(update.device, FEATURE) is not None:
            power.merge(update.device, update.data)  # one change, sent when it wakes
            return []
        fmt = self.formats.of_name(update.device)
        return self.subscriptions.enqueue(update.device, FEATURE,
                                          self._pending(fmt, update.data, now), now)

    def send_held(self, name: str, now: float) -> List[Action]:
        """``name`` woke: the attribute change held for it (merged) goes to its observer."""
        change = self.power.take_merged(name)
        if change is None:
            return []
        return self.subscriptions.enqueue(name, FEATURE,
                                          self._pending(self.formats.of_name(name), change, now),
                                          now)

    @staticmethod
    def _pending(fmt: PayloadFormat, data: Dict[str, Any], now: float) -> Pending:
        return Pending(fmt.attribute_update(data, now), content_format=fmt.content_format)

    def restored(self, name: str, now: float) -> List[Action]:
        """An observer of ``name`` was taken over (a restarted worker): its view is fetched
        (now, or when the link comes up) and notified whole."""
        self.unknown_views.add(name)
        self.views.pop(name, None)
        if not self.shared.link_up:
            return []  # on_link_up refreshes every observer
        return self.start_fetch("refresh", name, None, None, [], now)

    # == hooks ===============================================================

    def busy_devices(self) -> Set[str]:
        return {f.device for f in self.fetches.values()}

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        actions: List[Action] = []
        for fetch_id in [i for i, f in self.fetches.items() if f.deadline <= now]:
            actions += self._failed(fetch_id, "the platform did not answer the attribute "
                                              "request in time")
        return actions

    def on_link_up(self, now: float) -> List[Action]:
        """Refresh the shared attributes of every device that observes them."""
        actions: List[Action] = []
        for relation in list(self.subscriptions.observers.relations.values()):
            if relation.feature == FEATURE:
                actions += self.start_fetch("refresh", relation.device, None, None, [], now)
        return actions

    def on_link_down(self, now: float) -> List[Action]:
        """Reads waiting on the platform get 5.03."""
        actions: List[Action] = [unavailable(fetch.request.ref, "upstream connection lost")
                                 for fetch in self.fetches.values() if fetch.request is not None]
        self.fetches.clear()
        self.requests.clear()
        return actions

    def rename(self, old: str, new: str) -> None:
        if old in self.views:
            self.views[new] = self.views.pop(old)
        if old in self.unknown_views:
            self.unknown_views.discard(old)
            self.unknown_views.add(new)
        if old in self.known_keys:
            self.known_keys[new] = self.known_keys.pop(old)
        for fetch in self.fetches.values():
            if fetch.device == old:
                fetch.device = new

    def forget(self, name: str) -> List[Action]:
        self.views.pop(name, None)
        self.unknown_views.discard(name)
        self.known_keys.pop(name, None)
        actions: List[Action] = []
        for fetch_id in [i for i, f in self.fetches.items() if f.device == name]:
            actions += self._failed(fetch_id, "the platform deleted the device",
                                    codes.UNAUTHORIZED)
        return actions
