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
``10000000.0`` (a DOUBLE); such a value is sent as the integer, typed the same way.

Not yet protobuf here (they stay JSON, as with useJsonPayloadFormatForDefaultDownlinkTopics):
RPC replies, client-side RPC, claim, and every downlink.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .. import codes, gateway, payloads
from . import Message
from .json import JsonFormat

_JAVA_PLAIN_MAX = 1e7  # Java's Double.toString uses E notation from here on
_LONG_LIMIT = float(2 ** 63)


def _java_typed(value: Any) -> Any:
    """``value`` with each integral double that Java prints in E notation as an integer."""
    if type(value) is float:
        if value.is_integer() and _JAVA_PLAIN_MAX <= abs(value) < _LONG_LIMIT:
            return int(value)
        return value
    if type(value) is dict:
        return {key: _java_typed(item) for key, item in value.items()}
    if type(value) is list:
        return [_java_typed(item) for item in value]
    return value


def to_json(message: Any) -> Any:
    """A decoded message as ThingsBoard's JSON printer writes it (as Python values)."""
    return _java_typed(json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False, use_integers_for_enums=False))


class ProtobufFormat:
    name = "protobuf"
    content_format = codes.APPLICATION_JSON  # what ``encode`` writes: downlinks stay JSON

    def __init__(self, telemetry_class: Any, attributes_class: Any, json: JsonFormat,
                 json_compatible: bool = False):
        """``json_compatible``: enableCompatibilityWithJsonPayloadFormat (a payload that
        does not decode is read as JSON)."""
        self.telemetry_class = telemetry_class
        self.attributes_class = attributes_class
        self.json = json
        self.json_compatible = json_compatible

    def _decode(self, cls: Any, payload: bytes, what: str) -> Optional[Any]:
        """The JSON document of ``payload``, or None to read it as JSON instead."""
        try:
            message = cls.FromString(payload)
        except (DecodeError, ValueError) as exc:
            if self.json_compatible:
                return None
            raise codes.BadRequest("%s: payload does not decode as %s: %s"
                                   % (what, cls.DESCRIPTOR.full_name, exc))
        return to_json(message)

    def telemetry(self, device: str, payload: bytes, now: float) -> Message:
        doc = self._decode(self.telemetry_class, payload, "telemetry")
        if doc is None:
            return self.json.telemetry(device, payload, now)
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

    # Still JSON (issue 15's later steps): the same as a JSON device's.

    def claim(self, device: str, payload: bytes) -> Message:
        return self.json.claim(device, payload)

    def rpc_reply(self, device: str, rpc_id: int, payload: bytes) -> Message:
        return self.json.rpc_reply(device, rpc_id, payload)

    def rpc_call(self, payload: bytes) -> Tuple[str, Any]:
        return self.json.rpc_call(payload)

    def encode(self, document: Any) -> bytes:
        return self.json.encode(document)

    def rpc_result(self, payload: bytes) -> bytes:
        return self.json.rpc_result(payload)
