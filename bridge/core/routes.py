"""Map a CoAP request path to a ThingsBoard device-API route.

Mirrors ThingsBoard's ``/api/v1`` parsing (spec thingsboard-coap.md §1):

* ``/api/v1/{token}/{feature}[/...]``: token form; ``rpc/{id}`` carries an id.
* ``/api/v1/{feature}`` and ``/api/v1/{feature}/{n}``: certificate form (no token).
* ``/api/v1/provision``: provisioning, no device authentication.
* ``/fw/{token}``, ``/sw/{token}``: OTA downloads.
* ``/efento/m``, ``/efento/i``, ``/efento/c`` (POST), ``/efento/t`` (GET): Efento's
  sensors (``core/efento.py``); the token is in the payload.

A request whose only Uri-Path option holds slashes is split first, as
ThingsBoard's message deliverer does. Feature names are case-insensitive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from . import codes
from .codes import BadRequest, MethodNotAllowed, NotFound

TELEMETRY = "telemetry"
ATTRIBUTES = "attributes"
RPC = "rpc"
CLAIM = "claim"
PROVISION = "provision"
FIRMWARE = "firmware"
SOFTWARE = "software"
EFENTO_MEASUREMENTS = "efento/m"
EFENTO_DEVICE_INFO = "efento/i"
EFENTO_CONFIGURATION = "efento/c"
EFENTO_TIME = "efento/t"
EFENTO_FEATURES = {"m": EFENTO_MEASUREMENTS, "i": EFENTO_DEVICE_INFO,
                   "c": EFENTO_CONFIGURATION, "t": EFENTO_TIME}
# Server-side RPC ids are the platform's Java ``int`` (spec thingsboard-coap.md §1.2,
# thingsboard-gateway-mqtt.md §2): a reply to a larger id can match no request.
MAX_RPC_ID = 2 ** 31 - 1

FEATURES = frozenset({TELEMETRY, ATTRIBUTES, RPC, CLAIM, PROVISION, FIRMWARE, SOFTWARE})
SUPPORTED_METHODS = frozenset({codes.GET, codes.POST})
_COMMON = FEATURES - {PROVISION}  # spelled in lower case, with a token before them
# The last Uri-Path of a plain uplink (POST /api/v1/{token}/<this>) -> its feature.
_PLAIN_UPLINKS = {TELEMETRY.encode(): TELEMETRY, ATTRIBUTES.encode(): ATTRIBUTES}
_POST = codes.POST


@dataclass  # not frozen: built per request, and a frozen dataclass costs 3x to build
class Route:
    """Where a request goes. ``token`` is None for the certificate and provision forms."""

    feature: str
    token: Optional[str] = None
    rpc_id: Optional[int] = None


def split_path(segments: Sequence[str]) -> Tuple[str, ...]:
    """Apply the single-Uri-Path quirk: one option holding ``/`` is split."""
    if len(segments) == 1 and "/" in segments[0]:
        return tuple(part for part in segments[0].lstrip("/").split("/"))
    return tuple(segments)


def _int_or_none(text: str) -> Optional[int]:
    if text.isascii() and text.isdigit():
        return int(text)
    return None


def _feature(name: str) -> str:
    feature = name.lower()
    if feature not in FEATURES:
        raise BadRequest("unknown feature %r" % name[:32])
    return feature


def plain_uplink(method: int, segments: Sequence[bytes]) -> Optional[Tuple[str, str]]:
    """``(token, feature)`` when a request is a plain uplink, POST ``/api/v1/{token}/telemetry``
    or ``.../attributes`` (the bulk of the traffic, which the edge hands to the core a turn
    at a time); None for anything else, which goes to ``route``. ``segments`` are the raw
    Uri-Path values; a token that is not UTF-8 is None too (``route``'s caller answers 4.00).

    Agrees with ``route``: a request it accepts is routed there to the same feature and token.
    On the hot path: a few comparisons, no allocation but the token.
    """
    if method != _POST or len(segments) != 4:
        return None
    feature = _PLAIN_UPLINKS.get(segments[3])
    if feature is None or segments[0] != b"api" or segments[1] != b"v1" or not segments[2]:
        return None
    try:
        return segments[2].decode(), feature
    except UnicodeDecodeError:
        return None


def session_uplink(method: int, segments: Sequence[bytes]) -> Optional[str]:
    """The feature of a plain uplink in the token-less form, POST ``/api/v1/telemetry`` or
    ``/api/v1/attributes`` (over a DTLS session that verified the device), else None;
    agrees with ``route`` as ``plain_uplink`` does."""
    if method != _POST or len(segments) != 3 or segments[0] != b"api" or segments[1] != b"v1":
        return None
    return _PLAIN_UPLINKS.get(segments[2])


# The ``route`` label of the request metrics: a fixed set, whatever the path says.
METRIC_ROUTES = (TELEMETRY, ATTRIBUTES, "attributes_read", RPC, "rpc_reply", "client_rpc",
                 CLAIM, PROVISION, FIRMWARE, SOFTWARE, "other")


def metric_route(method: int, segments: Sequence[str]) -> str:
    """The request's name among ``METRIC_ROUTES``: its feature, with attributes read
    (GET) apart from uploaded (POST), and an RPC observation (GET ``rpc``) apart from a
    reply to a server-side RPC (POST ``rpc/{id}``) and a client-side RPC (POST ``rpc``);
    "other" for a path that is no route."""
    try:
        found = route(method, segments)
    except codes.CoapError:
        return "other"
    feature = found.feature
    if feature == ATTRIBUTES:
        return ATTRIBUTES if method == _POST else "attributes_read"
    if feature == RPC and method == _POST:
        return "rpc_reply" if found.rpc_id is not None else "client_rpc"
    return feature


def route(method: int, segments: Sequence[str]) -> Route:
    """Return the route for a request, or raise the ``CoapError`` to answer.

    Order of checks: unknown path (4.04), method (4.05), malformed API path (4.00).
    """
    if len(segments) == 4 and segments[0] == "api" and segments[1] == "v1" and segments[2] \
            and segments[3] in _COMMON and method in SUPPORTED_METHODS:
        return Route(segments[3], segments[2])  # the busy case, /api/v1/{token}/{feature}
    path = split_path(segments)
    if path[:1] in (("fw",), ("sw",)):
        if method != codes.GET:
            raise MethodNotAllowed("OTA resources support GET only")
        feature = FIRMWARE if path[0] == "fw" else SOFTWARE
        return Route(feature, token=path[1] if len(path) > 1 and path[1] else None)
    if path[:1] == ("efento",):
        return _efento(method, path)
    if path[:2] != ("api", "v1"):
        raise NotFound("no resource at /%s" % "/".join(path)[:64])
    if method not in SUPPORTED_METHODS:
        raise MethodNotAllowed("only GET and POST are supported")
    size = len(path)
    if size < 3:
        raise BadRequest("missing feature: use /api/v1/{token}/{feature}")
    if size == 3:
        if path[2].lower() == PROVISION:
            return Route(PROVISION)
        return Route(_feature(path[2]))
    if size == 4 and _int_or_none(path[3]) is not None:
        # /api/v1/{feature}/{id}: certificate form of an RPC reply
        return Route(_feature(path[2]), rpc_id=_int_or_none(path[3]))
    feature = _feature(path[3])
    if feature == PROVISION:
        return Route(PROVISION)
    rpc_id = _int_or_none(path[4]) if size >= 5 else None
    return Route(feature, token=path[2] or None, rpc_id=rpc_id)


def _efento(method: int, path: Tuple[str, ...]) -> Route:
    """``/efento/{m,i,c,t}``: ThingsBoard answers another path under ``/efento`` 4.00."""
    if method not in SUPPORTED_METHODS:
        raise MethodNotAllowed("only GET and POST are supported")
    feature = EFENTO_FEATURES.get(path[1]) if len(path) == 2 else None
    if feature is None:
        raise BadRequest("Efento resources are /efento/m, /efento/i, /efento/c (POST) and "
                         "/efento/t (GET)")
    return Route(feature)
