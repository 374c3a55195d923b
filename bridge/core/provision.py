"""Device provisioning (ThingsBoard's ``POST /api/v1/provision``), the pure parts: the
request's admission (``Provisioning``: it carries no credential, so it has a budget per
source address, ``provisioning.peer_rate``) and its fields; the edge provisions.

Request fields (spec thingsboard-coap.md §10): ``deviceName`` (optional),
``provisionDeviceKey`` and ``provisionDeviceSecret`` (required),
``credentialsType`` (ACCESS_TOKEN by default), ``token`` (a chosen access
token). Answers use ThingsBoard's JSON: ``{"credentialsValue",
"credentialsType", "status": "SUCCESS"}``, or ``{"errorMsg", "status":
"NOT_FOUND" | "FAILURE"}``.

As in ThingsBoard, a request is read as JSON first and, when it is not JSON text at all,
as its fixed ``ProvisionDeviceRequestMsg`` (``formats/fixed.py``); the answer then is a
``ProvisionDeviceResponseMsg`` (status, credentialsType, credentialsValue: no errorMsg in
it). Provisioning is not per device profile: there is no device yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from google.protobuf.message import DecodeError

from . import codes, names
from .actions import Provision, Request
from .codes import BadRequest
from .limits import RateLimiter
from .parts import Action, Part, Shared, address
from .payloads import NotJson, parse_json

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
    body: Dict[str, Any]  # as the device sent it (as JSON), for the platform
    protobuf: bool = False  # it came as a ProvisionDeviceRequestMsg: answer in kind


@dataclass(frozen=True)
class ProvisionProfile:
    key: str
    secret: str
    device_type: str
    strategy: str = CREATE_NEW


def parse_request(payload: bytes, max_depth: int, fixed: Any = None) -> ProvisionRequest:
    """The request, from JSON or, when the payload is not JSON text, from a
    ``ProvisionDeviceRequestMsg`` (``fixed``: ThingsBoard's fixed messages,
    ``formats.fixed.FixedMessages``; None: JSON only); 4.00 if neither."""
    if not payload and fixed is not None:  # as ThingsBoard: an empty message, NOT_FOUND
        return _from_protobuf(payload, fixed, NotJson("provision: empty payload"))
    try:
        doc = parse_json(payload, "provision", max_depth)
    except NotJson as exc:
        if fixed is None:
            raise
        return _from_protobuf(payload, fixed, exc)
    return _from_json(doc)


def _from_json(doc: Any) -> ProvisionRequest:
    if not isinstance(doc, dict):
        raise BadRequest("provision: expected a JSON object")
    for field in ("provisionDeviceKey", "provisionDeviceSecret"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise BadRequest("provision: %s is required" % field)
    name = doc.get("deviceName", "")
    if not isinstance(name, str):
        raise BadRequest("provision: deviceName must be a string")
    _checked_name(name)
    kind = doc.get("credentialsType", "ACCESS_TOKEN")
    if kind not in CREDENTIAL_TYPES:
        raise BadRequest("provision: unknown credentialsType")
    token = _checked_token(doc.get("token"))
    return ProvisionRequest(name.strip(), doc["provisionDeviceKey"], doc["provisionDeviceSecret"],
                            kind, token, doc)


def _checked_name(name: str) -> None:
    """4.00 for a deviceName that no registry keeps (``core.names``); empty is left to the
    strategy (ThingsBoard answers it NOT_FOUND)."""
    why = names.problem(name.strip(), "provision: deviceName") if name.strip() else None
    if why is not None:
        raise BadRequest(why)


def _checked_token(token: Any) -> Optional[str]:
    if token is not None and (not isinstance(token, str) or not token
                              or any(c in token for c in "/?# ")):
        raise BadRequest("provision: token must be a non-empty string without '/', '?', '#', ' '")
    return token


def _enum(cls: Any, field: str) -> Any:
    """The enum type of ``cls``'s field ``field`` (CredentialsType, ResponseStatus)."""
    return cls.DESCRIPTOR.fields_by_name[field].enum_type


def _from_protobuf(payload: bytes, fixed: Any, not_json: NotJson) -> ProvisionRequest:
    """A ``ProvisionDeviceRequestMsg``, with the JSON body the platform's provisioning API
    reads. An empty key or secret is not refused here: ThingsBoard answers it NOT_FOUND."""
    try:
        msg = fixed.ProvisionDeviceRequestMsg.FromString(payload)
    except (DecodeError, ValueError) as exc:
        raise BadRequest("%s, nor does it decode as transport.ProvisionDeviceRequestMsg: %s"
                         % (not_json.reason, exc))
    kind = _enum(fixed.ProvisionDeviceRequestMsg, "credentialsType").values_by_number.get(
        msg.credentialsType)
    if kind is None or kind.name not in CREDENTIAL_TYPES:
        raise BadRequest("provision: unknown credentialsType %d" % msg.credentialsType)
    data = msg.credentialsDataProto
    credentials = msg.provisionDeviceCredentialsMsg
    body: Dict[str, Any] = {"deviceName": msg.deviceName,
                            "provisionDeviceKey": credentials.provisionDeviceKey,
                            "provisionDeviceSecret": credentials.provisionDeviceSecret,
                            "credentialsType": kind.name}
    extra = (("token", data.validateDeviceTokenRequestMsg.token),
             ("hash", data.validateDeviceX509CertRequestMsg.hash),
             ("clientId", data.validateBasicMqttCredRequestMsg.clientId),
             ("username", data.validateBasicMqttCredRequestMsg.userName),
             ("password", data.validateBasicMqttCredRequestMsg.password))
    body.update((key, value) for key, value in extra if value)
    if msg.gateway:
        body["gateway"] = True
    _checked_name(msg.deviceName)
    return ProvisionRequest(msg.deviceName.strip(), credentials.provisionDeviceKey,
                            credentials.provisionDeviceSecret, kind.name,
                            _checked_token(body.get("token")), body, protobuf=True)


def success(token: str) -> Dict[str, Any]:
    return {"credentialsValue": token, "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}


def not_found() -> Dict[str, Any]:
    return {"errorMsg": NOT_FOUND_MSG, "status": "NOT_FOUND"}


def failure() -> Dict[str, Any]:
    return {"errorMsg": FAILURE_MSG, "status": "FAILURE"}


def protobuf_answer(doc: Dict[str, Any], fixed: Any) -> bytes:
    """ThingsBoard's JSON answer ``doc`` (``{"status", ...}``) as the
    ``ProvisionDeviceResponseMsg`` of a protobuf request (a credentialsValue that is not
    text, MQTT_BASIC's object, as its JSON text; the message has no errorMsg)."""
    msg = fixed.ProvisionDeviceResponseMsg()
    status = _enum(fixed.ProvisionDeviceResponseMsg, "status").values_by_name.get(
        str(doc.get("status")))
    msg.status = status.number if status is not None else 0  # UNKNOWN
    kind = _enum(fixed.ProvisionDeviceResponseMsg, "credentialsType").values_by_name.get(
        str(doc.get("credentialsType")))
    if kind is not None:
        msg.credentialsType = kind.number
    value = doc.get("credentialsValue")
    if value is not None:
        msg.credentialsValue = value if isinstance(value, str) else json.dumps(value)
    return msg.SerializeToString()


def find_profile(request: ProvisionRequest,
                 profiles: Sequence[ProvisionProfile]) -> Optional[ProvisionProfile]:
    """The profile whose key and secret match; None is ThingsBoard's NOT_FOUND."""
    for profile in profiles:
        if profile.key == request.key:
            return profile if profile.secret == request.secret else None
    return None


class Provisioning(Part):
    def __init__(self, shared: Shared, fixed: Any = None):
        """``fixed``: ThingsBoard's fixed messages (``formats.fixed.FixedMessages``), for
        requests that are not JSON; None: JSON only (protoc is not installed)."""
        super().__init__()
        self.fixed = fixed
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
        return [Provision(request.ref, parse_request(request.payload, self.max_depth,
                                                     self.fixed))]

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        if slow:
            self.limits.sweep(now)
        return []
