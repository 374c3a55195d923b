"""Request dispatch: a route to the part that owns it, after authentication and limits.

Every request goes through the same steps: the budget of its source address, the route
(routes.py), the credential turned into a device (auth.py, the one step that knows
credentials: the DTLS session's certificate or PSK identity when it has one, with a token
in the path naming the same device; else the token in the path), the device's request
budget (not for package blocks, which have their own), then the handler of the route's feature and method in ``handlers``. A new device API is a
part with a handler, and one line in that table.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from . import codes, routes
from .actions import Authenticated, Device, Request
from .attributes import Attributes
from .auth import AccessToken, Authenticator, Credential
from .downloads import Downloads
from .efento import Efento
from .formats import Formats
from .formats.efento import NAME as EFENTO
from .limits import RequestLimits
from .parts import Action, error_reply
from .provision import Provisioning
from .rpc import Rpc
from .uplinks import Uplinks

# (device, its credential, the route, the request, now) -> actions
Handler = Callable[[Device, Credential, routes.Route, Request, float], List[Action]]
GET, POST = codes.GET, codes.POST
_EFENTO = frozenset(routes.EFENTO_FEATURES.values())
_OTA = frozenset({routes.FIRMWARE, routes.SOFTWARE})


class Requests:
    def __init__(self, auth: Authenticator, limits: RequestLimits, provisioning: Provisioning,
                 uplinks: Uplinks, attributes: Attributes, rpc: Rpc, downloads: Downloads,
                 efento: Efento, formats: Formats):
        self.auth = auth
        self.limits = limits
        self.provisioning = provisioning
        self.efento = efento
        self.formats = formats
        # a device was heard from (set by the facade: power saving, power.py)
        self.heard: Callable[[Device, float], Any] = lambda device, now: ()

        def plain(handler: Callable[[Device, Request, float], List[Action]]) -> Handler:
            return lambda device, credential, route, request, now: handler(device, request, now)

        def package(device: Device, credential: Credential, route: routes.Route,
                    request: Request, now: float) -> List[Action]:
            return downloads.on_get(device, credential, route.feature, request, now)

        def rpc_post(device: Device, credential: Credential, route: routes.Route,
                     request: Request, now: float) -> List[Action]:
            return rpc.on_post(device, route.rpc_id, request, now)

        # (feature, method) -> (handler, whether it spends the device's request budget)
        self.handlers: Dict[Tuple[str, int], Tuple[Handler, bool]] = {
            (routes.TELEMETRY, POST): (plain(uplinks.on_telemetry), True),
            (routes.TELEMETRY, GET): (plain(uplinks.on_telemetry), True),  # 4.00
            (routes.ATTRIBUTES, POST): (plain(uplinks.on_attributes), True),
            (routes.ATTRIBUTES, GET): (plain(attributes.on_get), True),
            (routes.RPC, POST): (rpc_post, True),
            (routes.RPC, GET): (plain(rpc.on_get), True),
            (routes.CLAIM, POST): (plain(uplinks.on_claim), True),
            (routes.CLAIM, GET): (plain(uplinks.on_claim), True),  # 4.00
            (routes.FIRMWARE, GET): (package, False),  # a byte budget of its own
            (routes.FIRMWARE, POST): (package, False),  # 4.05
            (routes.SOFTWARE, GET): (package, False),
            (routes.SOFTWARE, POST): (package, False),
        }

    def handle(self, request: Request, now: float) -> List[Action]:
        """The answer to ``request`` (a ``CoapError`` raised is the caller's to answer)."""
        if self.limits.peers.enabled:
            self.limits.peer(request.remote, now)
        route = routes.route(request.method, request.path)
        if route.feature == routes.PROVISION:  # no credential: the part bounds it itself
            return self.provisioning.on_request(request, now)
        if route.feature in _EFENTO:  # the token is in the payload
            return self.efento.on_request(request, route.feature, now)
        credential = request.credential
        if credential is not None:  # over a DTLS session that verified the device
            device = self.auth.session_device(credential, route.token, request.remote, now)
        elif route.token is None:
            raise codes.Unauthorized("missing access token")
        else:
            credential = AccessToken(route.token)
            device = self.auth.authenticate(credential, request.remote, now)
        authenticated = Authenticated(request.ref)
        handler, limited = self.handlers[(route.feature, request.method)]
        woke = self.heard(device, now)  # any request: a sleeping device is awake now
        try:
            if self.formats.of(device.type).name == EFENTO and route.feature not in _OTA:
                # ThingsBoard: an EFENTO profile's device has only /efento/* (and OTA)
                raise codes.BadRequest("the device's profile is EFENTO: it posts to "
                                       "/efento/m, /efento/i and /efento/c, not /api/v1")
            if limited and self.limits.devices.enabled:
                self.limits.device(device, now)
            actions = handler(device, credential, route, request, now)
        except codes.CoapError as err:
            return [authenticated, error_reply(request.ref, err), *woke]
        actions.insert(0, authenticated)
        if woke:
            actions += woke
        return actions
