"""Downstream shapes: telling platform messages from the bridge's own uplinks, and reading them.

On a generic broker the bridge may receive its own publishes on the shared
topics ``v1/gateway/attributes`` and ``v1/gateway/rpc`` (MQTT 3.1.1 has no
No Local). The shapes differ, so each parser accepts only the downstream one:

* attributes push ``{"device": "Dev A", "data": {...}}``; our uplink is ``{"Dev A": {...}}``.
* server RPC ``{"device": "Dev A", "data": {"id": 1, "method": ..., "params": ...}}``;
  our reply is ``{"device": "Dev A", "id": 1, "data": ...}`` (top-level ``id``).

Documents are decoded with the JSON nesting bound devices get
(``limits.json_max_depth``) plus the levels of the platform's envelope, so a
shared attribute the bridge accepts from the platform is one a device could
have sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import jsondepth

GATEWAY_RPC_REQUEST_PREFIX = "v1/devices/me/rpc/request/"
GATEWAY_RPC_RESPONSE_PREFIX = "v1/devices/me/rpc/response/"
# Levels the platform's envelope adds around a value a device could send:
# {"device": .., "data": {"id": .., "method": .., "params": <value>}}.
PLATFORM_ENVELOPE_DEPTH = 2


@dataclass(frozen=True)
class AttributeUpdate:
    device: str
    data: Dict[str, Any]

    def apply(self, view: Dict[str, Any]) -> Dict[str, Any]:
        """The view after this update (``deleted`` lists removed keys)."""
        result = dict(view)
        for key, value in self.data.items():
            if key == "deleted":
                continue
            result[key] = value
        for key in self.deleted:
            result.pop(key, None)
        return result

    @property
    def deleted(self) -> List[str]:
        deleted = self.data.get("deleted")
        return [k for k in deleted if isinstance(k, str)] if isinstance(deleted, list) else []


@dataclass(frozen=True)
class ServerRpc:
    device: str
    id: int
    method: str
    params: Any


@dataclass(frozen=True)
class AttributeResponse:
    id: int
    device: str
    body: Dict[str, Any]

    def values(self, requested: List[str]) -> Optional[Dict[str, Any]]:
        """The attributes found, or None when a keys-less answer hid the key name."""
        if isinstance(self.body.get("values"), dict):
            return dict(self.body["values"])
        if "value" in self.body:
            if len(requested) == 1:
                return {requested[0]: self.body["value"]}
            return None
        return {}


def loads(payload: bytes, max_depth: int) -> Any:
    """The platform's JSON document; ``ValueError`` when it is not UTF-8 JSON, and
    ``jsondepth.TooDeep`` (a ``ValueError``) when nested deeper than ``max_depth``
    plus the envelope's levels."""
    return jsondepth.decode(payload.decode("utf-8"), max_depth + PLATFORM_ENVELOPE_DEPTH)


def undecodable_reason(error: ValueError) -> str:
    if isinstance(error, jsondepth.TooDeep):
        return "it is %s" % error
    return "it is not JSON"


def attribute_update(doc: Any) -> Optional[AttributeUpdate]:
    if (isinstance(doc, dict) and isinstance(doc.get("device"), str)
            and isinstance(doc.get("data"), dict) and "id" not in doc):
        return AttributeUpdate(doc["device"], doc["data"])
    return None


def server_rpc(doc: Any) -> Optional[ServerRpc]:
    if not isinstance(doc, dict) or "id" in doc or not isinstance(doc.get("device"), str):
        return None
    data = doc.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("id"), int) \
            or isinstance(data.get("id"), bool) or not isinstance(data.get("method"), str):
        return None
    return ServerRpc(doc["device"], data["id"], data["method"], data.get("params"))


def attribute_response(doc: Any) -> Optional[AttributeResponse]:
    if isinstance(doc, dict) and isinstance(doc.get("id"), int) and isinstance(doc.get("device"), str):
        return AttributeResponse(doc["id"], doc["device"], doc)
    return None


def topic_suffix_int(topic: str, prefix: str) -> Optional[int]:
    rest = topic[len(prefix):]
    return int(rest) if topic.startswith(prefix) and rest.isascii() and rest.isdigit() else None


def keys_param(value: Optional[str]) -> Optional[List[str]]:
    """``clientKeys=a,b`` -> ["a", "b"]; absent or empty -> None."""
    if value is None:
        return None
    keys = [k.strip() for k in value.split(",") if k.strip()]
    return keys or None
