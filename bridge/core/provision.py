"""Device provisioning (ThingsBoard's ``POST /api/v1/provision``), the pure parts: the
request's admission (``Provisioning``: it carries no credential, so it has a budget per
source address, ``provisioning.peer_rate``) and its fields; the edge provisions.

Request fields (spec thingsboard-coap.md §10): ``deviceName`` (optional),
``provisionDeviceKey`` and ``provisionDeviceSecret`` (required),
``credentialsType`` (ACCESS_TOKEN by default), ``token`` (a chosen access
token). Answers use ThingsBoard's JSON: ``{"credentialsValue",
"credentialsType", "status": "SUCCESS"}``, or ``{"errorMsg", "status":
"NOT_FOUND" | "FAILURE"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from . import codes
from .actions import Provision, Request
from .codes import BadRequest
from .limits import RateLimiter
from .parts import Action, Part, Shared, address
from .payloads import parse_json

CREDENTIAL_TYPES = ("ACCESS_TOKEN", "X509_CERTIFICATE", "MQTT_BASIC", "LWM2M_CREDENTIALS")
CREATE_NEW = "create_new"
PRE_PROVISIONED = "pre_provisioned"
NOT_FOUND_MSG = "Provision data was not found!"
FAILURE_MSG = "Failed to provision device!"


@dataclass(frozen=True)
class ProvisionRequest:
    device_name: str
    key: str
    secret: str
    credentials_type: str
    token: Optional[str]
    body: Dict[str, Any]  # as the device sent it, for the platform


@dataclass(frozen=True)
class ProvisionProfile:
    key: str
    secret: str
    device_type: str
    strategy: str = CREATE_NEW


def parse_request(payload: bytes, max_depth: int) -> ProvisionRequest:
    doc = parse_json(payload, "provision", max_depth)
    if not isinstance(doc, dict):
        raise BadRequest("provision: expected a JSON object")
    for field in ("provisionDeviceKey", "provisionDeviceSecret"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise BadRequest("provision: %s is required" % field)
    name = doc.get("deviceName", "")
    if not isinstance(name, str):
        raise BadRequest("provision: deviceName must be a string")
    kind = doc.get("credentialsType", "ACCESS_TOKEN")
    if kind not in CREDENTIAL_TYPES:
        raise BadRequest("provision: unknown credentialsType")
    token = doc.get("token")
    if token is not None and (not isinstance(token, str) or not token
                              or any(c in token for c in "/?# ")):
        raise BadRequest("provision: token must be a non-empty string without '/', '?', '#', ' '")
    return ProvisionRequest(name.strip(), doc["provisionDeviceKey"], doc["provisionDeviceSecret"],
                            kind, token, doc)


def success(token: str) -> Dict[str, Any]:
    return {"credentialsValue": token, "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}


def not_found() -> Dict[str, Any]:
    return {"errorMsg": NOT_FOUND_MSG, "status": "NOT_FOUND"}


def failure() -> Dict[str, Any]:
    return {"errorMsg": FAILURE_MSG, "status": "FAILURE"}


def find_profile(request: ProvisionRequest,
                 profiles: Sequence[ProvisionProfile]) -> Optional[ProvisionProfile]:
    """The profile whose key and secret match; None is ThingsBoard's NOT_FOUND."""
    for profile in profiles:
        if profile.key == request.key:
            return profile if profile.secret == request.secret else None
    return None


class Provisioning(Part):
    def __init__(self, shared: Shared):
        super().__init__()
        config = shared.config
        self.limits = RateLimiter(config.provisioning.peer_rate, config.provisioning.peer_burst)
        self.max_depth = config.limits.json_max_depth
        self.stats = {"rate_limited": 0}

    def on_request(self, request: Request, now: float) -> List[Action]:
        if self.limits.enabled:  # it needs no token: bounded per address
            wait = self.limits.allow(address(request.remote), now)
            if wait is not None:
                self.stats["rate_limited"] += 1
                raise codes.TooManyRequests("too many provisioning requests from this address",
                                            max_age=wait)
        if request.method != codes.POST:
            raise BadRequest("provision accepts POST only")
        return [Provision(request.ref, parse_request(request.payload, self.max_depth))]

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        if slow:
            self.limits.sweep(now)
        return []
