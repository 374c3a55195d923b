"""ThingsBoard MQTT gateway topics and payload shapes (spec thingsboard-gateway-mqtt.md §2).

Pure functions: each returns ``(topic, payload_bytes)``. ``publish_packet_size``
computes the exact size of the MQTT PUBLISH packet so that a payload that the
platform would refuse (and close the whole gateway connection over) is never
sent.
"""

from __future__ import annotations

import json
from typing import List, Tuple

from .payloads import Claim, TelemetryEntry, Values, dumps

CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
RPC = "v1/gateway/rpc"
CLAIM = "v1/gateway/claim"

Message = Tuple[str, bytes]


def connect(device: str, device_type: str) -> Message:
    return CONNECT, dumps({"device": device, "type": device_type})


def disconnect(device: str) -> Message:
    return DISCONNECT, dumps({"device": device})


def telemetry(device: str, entries: List[TelemetryEntry]) -> Message:
    return TELEMETRY, dumps({device: [{"ts": e.ts, "values": e.values} for e in entries]})


def attributes(device: str, values: Values) -> Message:
    return ATTRIBUTES, dumps({device: values})


def claim(device: str, info: Claim) -> Message:
    return CLAIM, dumps({device: {"secretKey": info.secret_key, "durationMs": info.duration_ms}})


def _varint_size(value: int) -> int:
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


def publish_packet_size(topic: str, payload: bytes, mqtt5: bool) -> int:
    """Bytes on the wire of a QoS 1 PUBLISH without properties."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + len(payload) + (1 if mqtt5 else 0)
    return 1 + _varint_size(remaining) + remaining


def rpc_reply(device: str, rpc_id: int, data: object) -> Message:
    """A device's answer to server-side RPC ``rpc_id``; ``data`` is kept as the device sent it."""
    return RPC, dumps({"device": device, "id": rpc_id, "data": data})


def rename_device(topic: str, payload: bytes, old: str, new: str) -> bytes:
    """A stored gateway message of device ``old``, as it must be sent for ``new``."""
    doc = json.loads(payload)
    if topic == RPC:
        doc["device"] = new
    elif isinstance(doc, dict) and old in doc:
        doc = {new: doc[old]}
    return dumps(doc)
