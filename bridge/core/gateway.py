"""ThingsBoard MQTT gateway topics and payload shapes (spec thingsboard-gateway-mqtt.md §2).

Pure functions: each returns ``(topic, payload_bytes)``. ``publish_packet_size``
computes the exact size of the MQTT PUBLISH packet so that a payload that the
platform would refuse (and close the whole gateway connection over) is never
sent.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

from .payloads import Claim, TelemetryEntry, Values, dumps, json_string

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


def telemetry_as_sent(device: str, ts: int, values: bytes) -> Message:
    """``telemetry`` of one entry whose values are the JSON object text ``values``,
    usually as the device sent it (``payloads.plain_values`` and ``values_text``): the
    common upload costs no re-encoding."""
    return TELEMETRY, b'{%s:[{"ts":%d,"values":%s}]}' % (
        json_string(device).encode("utf-8"), ts, values.strip())


def attributes_as_sent(device: str, values: bytes) -> Message:
    """``attributes`` whose values are the JSON object text ``values`` (see above)."""
    return ATTRIBUTES, b"{%s:%s}" % (json_string(device).encode("utf-8"), values.strip())


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


# What a QoS 1 PUBLISH adds to its topic and payload, at most, for topics of ASCII
# characters: fixed header 1, length field up to 4, topic length 2, packet id 2, an
# empty property list 1 (MQTT 5); other characters may add up to 3 bytes per
# character in UTF-8, so the bound below holds for any topic of under 256 characters.
MAX_PUBLISH_OVERHEAD = 10 + 3 * 255


def publish_packet_size(topic: str, payload: bytes, mqtt5: bool) -> int:
    """Bytes on the wire of a QoS 1 PUBLISH without properties."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + len(payload) + (1 if mqtt5 else 0)
    return 1 + _varint_size(remaining) + remaining


def rpc_reply(device: str, rpc_id: int, data: object) -> Message:
    """A device's answer to server-side RPC ``rpc_id``; ``data`` is kept as the device sent it."""
    return RPC, dumps({"device": device, "id": rpc_id, "data": data})


# Topics whose messages of many devices can travel in one publish: the payload maps
# device names to their data. Telemetry arrays of one device are concatenated; an
# attributes object can appear once per device (two would collide on one key).
MERGEABLE = {TELEMETRY: 0, ATTRIBUTES: 1}  # topic -> most messages per device, 0: no limit


def merge(topic: str, messages: Sequence[Tuple[str, bytes]]) -> bytes:
    """One payload carrying ``(device, payload)`` messages of a MERGEABLE ``topic``, each
    as one of the functions above made it, in their order.

    Works on the bytes: each payload is ``{"<device>":<data>}``, so the data is cut out
    and joined, with no JSON decoding. Payloads of any other shape take the slow path,
    which decodes them."""
    if len(messages) == 1:
        return messages[0][1]
    telemetry = topic == TELEMETRY
    groups: Dict[bytes, List[bytes]] = {}  # device as a JSON string -> its data, in order
    for device, payload in messages:
        key, head = _heads(device, telemetry)
        if not (payload.startswith(head) and payload.endswith(b"]}" if telemetry else b"}}")) \
                or (not telemetry and key in groups):
            return _merge_decoded(topic, messages)
        # telemetry: the elements of the array "[...]"; attributes: the object "{...}"
        data = payload[len(head):-2] if telemetry else payload[len(head) - 1:-1]
        group = groups.get(key)
        if group is None:
            groups[key] = [data]
        else:
            group.append(data)
    if telemetry:
        parts = [key + b":[" + b",".join(data for data in datas if data) + b"]"
                 for key, datas in groups.items()]
    else:
        parts = [key + b":" + datas[0] for key, datas in groups.items()]
    return b"{" + b",".join(parts) + b"}"


@lru_cache(maxsize=1 << 16)
def _heads(device: str, telemetry: bool) -> Tuple[bytes, bytes]:
    """``device`` as a JSON string, and how its telemetry (or attributes) payload starts."""
    key = json_string(device).encode("utf-8")
    return key, b"{" + key + (b":[" if telemetry else b":{")


def _merge_decoded(topic: str, messages: Sequence[Tuple[str, bytes]]) -> bytes:
    merged: Dict[str, object] = {}
    for _, payload in messages:
        for device, data in json.loads(payload).items():
            if topic == TELEMETRY:
                merged.setdefault(device, [])
                merged[device] += data if isinstance(data, list) else [data]  # type: ignore
            else:
                merged.setdefault(device, {}).update(data)  # type: ignore
    return dumps(merged)


def rename_device(topic: str, payload: bytes, old: str, new: str) -> bytes:
    """A stored gateway message of device ``old``, as it must be sent for ``new``."""
    doc = json.loads(payload)
    if topic == RPC:
        doc["device"] = new
    elif isinstance(doc, dict) and old in doc:
        doc = {new: doc[old]}
    return dumps(doc)
