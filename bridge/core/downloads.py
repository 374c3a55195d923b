"""Package downloads (GET /api/v1/{token}/firmware and /software, /fw/{token}, and their
token-less forms over a DTLS session).

The package assigned to a device is read from its shared attributes (``fw_*`` /
``sw_*``), fetched once through the attributes part and kept up to date from the
platform's pushes; the bytes come from the edge's package cache (``ServePackage``).
Blocks cost a byte budget of their own (``limits.download_rate`` / ``download_burst``),
not the device's request budget, which only the attribute fetch spends.

The upstream package source fetches on the device's own MQTT session, with its access
token: a certificate or PSK device the registry holds no token for gets 4.04 there (and
the log says why, once per device); the directory source serves every device.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codes, ota, routes
from .actions import Device, Log, Request, ServePackage
from .attributes import Attributes, Fetch
from .auth import Credential
from .codes import CoapError
from .downstream import AttributeUpdate
from .limits import RateLimiter, RequestLimits
from .parts import Action, Part, Shared, error_reply

KINDS = {routes.FIRMWARE: ota.FIRMWARE, routes.SOFTWARE: ota.SOFTWARE}


class Downloads(Part):
    def __init__(self, shared: Shared, attributes: Attributes, limits: RequestLimits,
                 token_of: Callable[[Device, Credential], Optional[str]] = lambda d, c: None):
        super().__init__()
        self.token_of = token_of  # the device's access token, if the bridge knows it
        self.upstream = shared.config.ota.source == "upstream"
        self.told_tokenless: Set[str] = set()  # devices the log was told about
        self.shared = shared
        self.attributes = attributes
        self.request_limits = limits
        config = shared.config.limits
        self.limits = RateLimiter(config.download_rate, config.download_burst)
        self.known: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (device, kind) -> fw_* / sw_*
        self.stats = {"rate_limited": 0}
        attributes.watchers.append(self._updated)

    def on_get(self, device: Device, credential: Credential, feature: str, request: Request,
               now: float) -> List[Action]:
        if request.method == codes.POST:
            raise codes.MethodNotAllowed("packages are downloaded with GET")
        kind = KINDS[feature]
        query = ota.parse_query(request.query)
        if self.limits.enabled:
            self._limit(device, request, query, now)
        token = self.token_of(device, credential)
        if token is None and self.upstream:
            return self._tokenless(device, request)
        known = self.known.get((device.name, kind))
        if known is not None:
            return _serve(device.name, token, kind, known, query, request)
        if self.request_limits.devices.enabled:  # this one asks the platform
            self.request_limits.device(device, now)
        self.shared.require_link()

        def fetched(fetch: Fetch) -> List[Action]:
            self.known[(fetch.device, kind)] = dict(fetch.shared)
            try:
                return _serve(fetch.device, token, kind, fetch.shared,
                              ota.parse_query(request.query), request)
            except CoapError as err:
                return [error_reply(request.ref, err)]
        return self.attributes.start_fetch("ota", device.name, request, None, ota.keys(kind),
                                           now, device, done=fetched)

    def _tokenless(self, device: Device, request: Request) -> List[Action]:
        """4.04: the upstream source needs a token this device does not have."""
        actions: List[Action] = [error_reply(request.ref, codes.NotFound(
            "packages come from the platform, which needs this device's access token; "
            "the bridge holds none for it"))]
        if device.name not in self.told_tokenless:
            self.told_tokenless.add(device.name)
            actions.insert(0, Log("warn", "{device} asked for a package, but ota.source "
                                  "upstream fetches it with the device's access token, and "
                                  "it has none (a certificate or PSK device): answered 4.04. "
                                  "Give it a token (coapbridge devices add ... --token) or "
                                  "set ota.source to directory", {"device": device.name}))
        return actions

    def _limit(self, device: Device, request: Request, query: ota.OtaQuery, now: float) -> None:
        """A package request costs the bytes it can get: the size asked for by Block2 or
        ``size``, at most what one answer carries to its remote (``Request.room``: a
        block of 1024 bytes over UDP and DTLS; on a reliable connection a BERT block or a
        whole chunk up to the Max-Message-Size); without either, that much."""
        asked = request.block2[1] if request.block2 is not None else query.size
        room = request.room
        cost = min(asked, room) if asked else room
        wait = self.limits.allow(device.name, now, cost)
        if wait is not None:
            self.stats["rate_limited"] += 1
            raise codes.TooManyRequests("download rate limit of this device", max_age=wait)

    def _updated(self, update: AttributeUpdate) -> None:
        """The platform changed attributes: keep the package attributes known up to date."""
        for kind in (ota.FIRMWARE, ota.SOFTWARE):
            known = self.known.get((update.device, kind))
            if known is not None and any(k.startswith(kind + "_") for k in
                                         list(update.data) + update.deleted):
                relevant = {k: v for k, v in update.data.items() if k in ota.keys(kind)}
                self.known[(update.device, kind)] = AttributeUpdate(
                    update.device, dict(relevant, deleted=update.deleted)).apply(known)

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        if slow:
            self.limits.sweep(now)
        return []


def _serve(name: str, token: Optional[str], kind: str, attributes: Dict[str, Any],
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
