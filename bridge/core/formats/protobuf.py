"""Protocol Buffers payloads, as ThingsBoard's CoAP transport reads them for a PROTOBUF
device profile.

Telemetry and client attributes are decoded with the profile's schema and turned into the
JSON ThingsBoard's printer (protobuf-java ``JsonFormat`` with default values) would give:
lowerCamelCase names, 64-bit integers as strings (the platform's type cast makes them LONG
again), enums by name, fields declared ``optional`` left out when unset, others printed with
their defaults, nested messages as objects. That JSON then follows the JSON rules (the
``ts`` + ``values`` form, the receipt-time stamp).

Numbers keep the platform's typing: Java prints a double outside [1e-3, 1e7) as ``1.0E7``,
which the platform stores as LONG when it is integral, where Python would write
``10000000.0`` (a DOUBLE); such a value is sent as the integer, typed the same way. The
printing is ``protojson``'s (the same document as protobuf's ``MessageToDict``, faster); a
plain object of values goes into the gateway message as its text, as a JSON upload does.

Claims and client-side RPC use ThingsBoard's fixed messages (``fixed``), whatever the
profile: ``ClaimDevice {secretKey, durationMs}`` and ``RpcRequest {method, params}`` (its
``params`` JSON text, read as JSON; text that is not JSON stays a string, as ThingsBoard's
lenient parser keeps it; empty is null). The platform's answer to a client-side RPC goes
back as ``ToServerRpcResponseMsg {requestId: 0, payload: the answer's JSON text}``, or
as the JSON itself with useJsonPayloadFormatForDefaultDownlinkTopics.

Not yet protobuf here (they stay JSON): RPC replies and the other downlinks.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from google.protobuf.message import DecodeError

from .. import codes, gateway, payloads
from . import Message
from .fixed import FixedMessages
from .json import JsonFormat
from .protojson import to_json


class ProtobufFormat:
    name = "protobuf"

    def __init__(self, telemetry_class: Any, attributes_class: Any, json: JsonFormat,
                 json_compatible: bool = False, *, fixed: FixedMessages,
                 json_downlinks: bool = False):
        """``json_compatible``: enableCompatibilityWithJsonPayloadFormat (a payload that
        does not decode is read as JSON). ``fixed``: ThingsBoard's fixed messages
        (``fixed.FixedMessages``). ``json_downlinks``:
        useJsonPayloadFormatForDefaultDownlinkTopics (downlinks are JSON)."""
        self.telemetry_class = telemetry_class
        self.attributes_class = attributes_class
        self.json = json
        self.json_compatible = json_compatible
        self.fixed = fixed
        self.json_downlinks = json_downlinks
        self.content_format = json.content_format if json_downlinks else codes.OCTET_STREAM

    def _message(self, cls: Any, payload: bytes, what: str) -> Optional[Any]:
        """``payload`` decoded as ``cls``, or None to read it as JSON instead."""
        try:
            return cls.FromString(payload)
        except (DecodeError, ValueError) as exc:
            if self.json_compatible:
                return None
            raise codes.BadRequest("%s: payload does not decode as %s: %s"
                                   % (what, cls.DESCRIPTOR.full_name, exc))

    def _decode(self, cls: Any, payload: bytes, what: str) -> Optional[Any]:
        """The JSON document of ``payload``, or None to read it as JSON instead."""
        message = self._message(cls, payload, what)
        return None if message is None else to_json(message)

    def telemetry(self, device: str, payload: bytes, now: float) -> Message:
        doc = self._decode(self.telemetry_class, payload, "telemetry")
        if doc is None:
            return self.json.telemetry(device, payload, now)
        if payloads.plain_values(doc):  # what telemetry_entries would make of it, cheaper
            return gateway.telemetry_as_sent(device, int(now * 1000), payloads.dumps(doc))
        ts = doc.get("ts")
        if type(ts) is str and "values" in doc and ts.isdigit():
            doc["ts"] = int(ts)  # an int64 printed as text, read as a number (Gson)
        return gateway.telemetry(device, payloads.telemetry_entries(doc, int(now * 1000)))

    def attributes(self, device: str, payload: bytes) -> Tuple[str, bytes, payloads.Values]:
        doc = self._decode(self.attributes_class, payload, "attributes")
        if doc is None:
            return self.json.attributes(device, payload)
        values = payloads.attribute_values(doc)
        topic, body = gateway.attributes(device, values)
        return topic, body, values

    def claim(self, device: str, payload: bytes) -> Message:
        msg = self._message(self.fixed.ClaimDevice, payload, "claim")
        if msg is None:
            return self.json.claim(device, payload)
        return gateway.claim(device, payloads.Claim(msg.secretKey, msg.durationMs))

    def rpc_call(self, payload: bytes) -> Tuple[str, Any]:
        msg = self._message(self.fixed.RpcRequest, payload, "rpc")
        if msg is None:
            return self.json.rpc_call(payload)
        if not msg.method:
            raise codes.BadRequest("rpc: method is empty (transportapi.RpcRequest: "
                                   "string method = 1; string params = 2)")
        return msg.method, self._params(msg.params)

    def _params(self, text: str) -> Any:
        if not text:
            return None
        try:
            return payloads.parse_json(text.encode("utf-8"), "rpc params", self.json.max_depth)
        except codes.BadRequest:
            return text  # not JSON: a string, as ThingsBoard's lenient parser reads it

    def rpc_result(self, payload: bytes) -> bytes:
        if self.json_downlinks:
            return self.json.rpc_result(payload)
        return self.fixed.ToServerRpcResponseMsg(
            payload=payload.decode("utf-8", "replace")).SerializeToString()

    # Still JSON (issue 15's later steps): the same as a JSON device's.

    def rpc_reply(self, device: str, rpc_id: int, payload: bytes) -> Message:
        return self.json.rpc_reply(device, rpc_id, payload)

    def encode(self, document: Any) -> bytes:
        return self.json.encode(document)
