"""JSON payloads, as ThingsBoard's CoAP device API defines them (today every device's).

Plain uploads (a flat object of values) go to the platform as the device wrote them,
inside the gateway envelope, without decoding and encoding them again: that is the
uplink hot path's main saving (see ``payloads.values_text``).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from .. import codes, gateway, payloads
from . import DEFAULT_PAYLOAD_TYPE, BuildContext, Message, PayloadFormat, PayloadFormatEntry


class JsonFormat:
    name = "json"
    content_format = codes.APPLICATION_JSON

    def __init__(self, max_depth: int = payloads.MAX_DEPTH):
        self.max_depth = max_depth  # deeper documents get 4.00 (limits.json_max_depth)

    def telemetry(self, device: str, payload: bytes, now: float) -> Message:
        plain = payloads.plain_object(payload, self.max_depth)  # the common upload
        if plain is not None:
            return gateway.telemetry_as_sent(device, int(now * 1000),
                                             payloads.values_text(plain, payload))
        doc = payloads.parse_json(payload, "telemetry", self.max_depth)
        if payloads.plain_values(doc):
            return gateway.telemetry_as_sent(device, int(now * 1000),
                                             payloads.values_text(doc, payload))
        return gateway.telemetry(device, payloads.telemetry_entries(doc, int(now * 1000)))

    def attributes(self, device: str, payload: bytes) -> Tuple[str, bytes, payloads.Values]:
        plain = payloads.plain_object(payload, self.max_depth)  # the common upload
        if plain is not None:
            topic, body = gateway.attributes_as_sent(device, payloads.values_text(plain, payload))
            return topic, body, plain
        doc = payloads.parse_json(payload, "attributes", self.max_depth)
        values = payloads.attribute_values(doc)
        if payloads.plain_values(doc):
            topic, body = gateway.attributes_as_sent(device, payloads.values_text(doc, payload))
        else:
            topic, body = gateway.attributes(device, values)
        return topic, body, values

    def claim(self, device: str, payload: bytes) -> Message:
        return gateway.claim(device, payloads.parse_claim(payload, self.max_depth))

    def rpc_reply(self, device: str, rpc_id: int, payload: bytes) -> Message:
        data = payloads.parse_json(payload, "rpc reply", self.max_depth)
        return gateway.rpc_reply(device, rpc_id, data)

    def rpc_call(self, payload: bytes) -> Tuple[str, Any]:
        doc = payloads.parse_json(payload, "rpc", self.max_depth)
        method = doc.get("method") if isinstance(doc, dict) else None
        if not isinstance(method, str) or not method:
            raise codes.BadRequest('rpc: expected {"method": "...", "params": ...}')
        return method, doc.get("params")

    def attribute_update(self, data: Dict[str, Any], now: float) -> bytes:
        return payloads.dumps(data)  # {"k": v, ..., "deleted": [...]}, as the platform sent it

    def attributes_response(self, client: Dict[str, Any], shared: Dict[str, Any],
                            now: float) -> bytes:
        body: Dict[str, Any] = {}
        if client:
            body["client"] = client
        if shared:
            body["shared"] = shared
        return payloads.dumps(body)

    def server_rpc(self, rpc_id: int, method: str, params: Any) -> bytes:
        return payloads.dumps({"id": rpc_id, "method": method, "params": params})

    def rpc_result(self, payload: bytes) -> bytes:
        return payload  # the platform's JSON, as it sent it


def build(profile: Any, context: BuildContext) -> PayloadFormat:
    return context.json  # one JSON format for every type: limits.json_max_depth's


FORMAT = PayloadFormatEntry(JsonFormat.name, build, payload_type=DEFAULT_PAYLOAD_TYPE)
