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

A message whose JSON would nest deeper than ``limits.json_max_depth`` (the bound every JSON
document from a device has) gets 4.00, as a JSON upload that deep does; only the message
types whose schema allows that depth (a message that contains itself, or a schema that
deep) are measured.

RPC replies (``POST .../rpc/{id}``) are decoded with the profile's RPC response schema and
printed the same way; that JSON is the RPC's result.

Downlinks, as ThingsBoard's CoAP transport writes them for such a profile, carry
Content-Format 42 (application/octet-stream):

- shared-attribute notifications (observe of /attributes): ThingsBoard's fixed
  ``AttributeUpdateNotificationMsg``, one typed ``TsKvProto`` per value (bool, 64-bit
  integer, double, string; objects, arrays and anything else as JSON text) and the deleted
  names. The gateway API carries no attribute times: ``ts`` is the bridge's receipt time.
- attribute reads: ``GetAttributeResponseMsg`` (client and shared lists).
- server-side RPC (observe of /rpc): the profile's RPC request schema, ``method``,
  ``requestId`` and ``params`` merged from the platform's JSON as ThingsBoard's JSON parser
  would (``protomerge``); params that do not fit raise ``CannotEncode``.

With useJsonPayloadFormatForDefaultDownlinkTopics every downlink stays JSON (50), as a JSON
device's.

Claims and client-side RPC use ThingsBoard's fixed messages (``fixed``), whatever the
profile: ``ClaimDevice {secretKey, durationMs}`` and ``RpcRequest {method, params}`` (its
``params`` JSON text, read as JSON; text that is not JSON stays a string, as ThingsBoard's
lenient parser keeps it; empty is null). The platform's answer to a client-side RPC goes
back as ``ToServerRpcResponseMsg {requestId: 0, payload: the answer's JSON text}``, or
as the JSON itself with useJsonPayloadFormatForDefaultDownlinkTopics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from google.protobuf.message import DecodeError

from ...settings.schema import setting
from .. import codes, gateway, jsondepth, payloads
from . import (BuildContext, CannotEncode, FormatKeys, Message, PayloadFormatEntry, protomerge,
               protoschema)
from .fixed import FixedMessages
from .json import JsonFormat
from .protojson import json_depth, to_json

_LONG_BOUND = 2 ** 63


def _shallow(cls: Any, max_depth: int) -> bool:
    """Whether no message of ``cls`` prints as JSON deeper than ``max_depth``."""
    depth = json_depth(cls.DESCRIPTOR)
    return depth is not None and depth <= max_depth


class ProtobufFormat:
    name = "protobuf"

    def __init__(self, telemetry_class: Any, attributes_class: Any, json: JsonFormat,
                 json_compatible: bool = False, *, rpc_request_class: Any,
                 rpc_response_class: Any, fixed: FixedMessages, json_downlinks: bool = False):
        """``json_compatible``: enableCompatibilityWithJsonPayloadFormat (a payload that
        does not decode is read as JSON); ``json_downlinks``:
        useJsonPayloadFormatForDefaultDownlinkTopics (every downlink is JSON)."""
        self.telemetry_class = telemetry_class
        self.attributes_class = attributes_class
        self.rpc_request_class = rpc_request_class
        self.rpc_response_class = rpc_response_class
        self.fixed = fixed
        self.json = json
        self.json_compatible = json_compatible
        self.json_downlinks = json_downlinks
        self.content_format = json.content_format if json_downlinks else codes.OCTET_STREAM
        # the uplink messages whose JSON may nest deeper than limits.json_max_depth (a
        # recursive message, or one that deep): their documents are measured, as a JSON
        # upload's are; the others cannot be too deep
        self._measured = {cls for cls in (telemetry_class, attributes_class, rpc_response_class)
                          if not _shallow(cls, json.max_depth)}

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
        if message is None:
            return None
        doc = to_json(message)
        if cls in self._measured:
            try:
                jsondepth.check(doc, self.json.max_depth)
            except jsondepth.TooDeep:
                raise codes.BadRequest("%s: %s nested deeper than %d levels"
                                       % (what, cls.DESCRIPTOR.full_name, self.json.max_depth))
        return doc

    # == uplinks =============================================================

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

    def rpc_reply(self, device: str, rpc_id: int, payload: bytes) -> Message:
        doc = self._decode(self.rpc_response_class, payload, "rpc reply")
        if doc is None:
            return self.json.rpc_reply(device, rpc_id, payload)
        return gateway.rpc_reply(device, rpc_id, doc)

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
        except payloads.NotJson:
            return text  # not JSON: a string, as ThingsBoard's lenient parser reads it

    def rpc_result(self, payload: bytes) -> bytes:
        if self.json_downlinks:
            return self.json.rpc_result(payload)
        return self.fixed.ToServerRpcResponseMsg(
            payload=payload.decode("utf-8", "replace")).SerializeToString()

    # == downlinks ===========================================================

    def _ts_kv(self, key: str, value: Any, ts: int) -> Any:
        """One attribute as ThingsBoard types it in a ``TsKvProto``."""
        fixed = self.fixed
        kind = type(value)
        if kind is bool:
            kv = fixed.KeyValueProto(key=key, type=fixed.BOOLEAN_V, bool_v=value)
        elif kind is int and -_LONG_BOUND <= value < _LONG_BOUND:
            kv = fixed.KeyValueProto(key=key, type=fixed.LONG_V, long_v=value)
        elif kind is float:
            kv = fixed.KeyValueProto(key=key, type=fixed.DOUBLE_V, double_v=value)
        elif kind is str:
            kv = fixed.KeyValueProto(key=key, type=fixed.STRING_V, string_v=value)
        else:  # objects, arrays (and what no LONG holds) as their JSON text
            kv = fixed.KeyValueProto(key=key, type=fixed.JSON_V,
                                     json_v=payloads.dumps(value).decode("utf-8"))
        return fixed.TsKvProto(ts=ts, kv=kv)

    def attribute_update(self, data: Dict[str, Any], now: float) -> bytes:
        if self.json_downlinks:
            return self.json.attribute_update(data, now)
        ts = int(now * 1000)
        message = self.fixed.AttributeUpdateNotificationMsg()
        message.sharedUpdated.extend(self._ts_kv(key, value, ts)
                                     for key, value in data.items() if key != "deleted")
        deleted = data.get("deleted")
        if type(deleted) is list:
            message.sharedDeleted.extend(key for key in deleted if type(key) is str)
        return message.SerializeToString()

    def attributes_response(self, client: Dict[str, Any], shared: Dict[str, Any],
                            now: float) -> bytes:
        if self.json_downlinks:
            return self.json.attributes_response(client, shared, now)
        ts = int(now * 1000)
        message = self.fixed.GetAttributeResponseMsg()
        message.clientAttributeList.extend(self._ts_kv(k, v, ts) for k, v in client.items())
        message.sharedAttributeList.extend(self._ts_kv(k, v, ts) for k, v in shared.items())
        return message.SerializeToString()

    def server_rpc(self, rpc_id: int, method: str, params: Any) -> bytes:
        if self.json_downlinks:
            return self.json.server_rpc(rpc_id, method, params)
        message = self.rpc_request_class()
        try:
            protomerge.merge({"method": method, "requestId": rpc_id, "params": params},
                             message)
        except protomerge.MergeError as exc:
            raise CannotEncode("the RPC does not fit %s: %s"
                               % (message.DESCRIPTOR.full_name, exc)) from exc
        return message.SerializeToString()


# == the registry's entry (``registry``) ===================================

_SCHEMA = " Its text, or give the path of a file holding it as the key with File appended. " \
    "Left out: ThingsBoard's default."


@dataclass(frozen=True)
class ProtobufKeys(FormatKeys):
    """A PROTOBUF profile's keys, ThingsBoard's (its transportPayloadTypeConfiguration), and
    a file for each schema. After the start-up check each schema key holds the text (read
    from its file, or ThingsBoard's default)."""
    deviceTelemetryProtoSchema: str = setting("", "PROTOBUF: the telemetry schema." + _SCHEMA)
    deviceTelemetryProtoSchemaFile: str = setting("", "The file of the telemetry schema.")
    deviceAttributesProtoSchema: str = setting("", "PROTOBUF: the client attributes schema."
                                               + _SCHEMA)
    deviceAttributesProtoSchemaFile: str = setting("", "The file of the attributes schema.")
    deviceRpcRequestProtoSchema: str = setting("", "PROTOBUF: the schema of server-side RPCs "
                                               "sent to the device." + _SCHEMA)
    deviceRpcRequestProtoSchemaFile: str = setting("", "The file of the RPC request schema.")
    deviceRpcResponseProtoSchema: str = setting("", "PROTOBUF: the schema of the device's RPC "
                                                "replies." + _SCHEMA)
    deviceRpcResponseProtoSchemaFile: str = setting("", "The file of the RPC response schema.")
    enableCompatibilityWithJsonPayloadFormat: bool = setting(
        False, "An undecodable PROTOBUF payload is tried as JSON.")
    useJsonPayloadFormatForDefaultDownlinkTopics: bool = setting(
        False, "Downlinks (attribute notifications and reads, RPCs) stay JSON.")


FLAGS = ("enableCompatibilityWithJsonPayloadFormat",
         "useJsonPayloadFormatForDefaultDownlinkTopics")


def check_profile(profile: Any, where: str) -> List[str]:
    """A schema is given as its text or its file, not both."""
    keys = profile.format_keys
    return ["%s: give %s or %sFile, not both" % (where, kind, kind) for kind in protoschema.KINDS
            if getattr(keys, kind) and getattr(keys, kind + "File")]


def build(profile: Any, context: BuildContext) -> "ProtobufFormat":
    """A PROTOBUF profile's format: its schemas (texts by now: the start-up check read the
    files, gave ThingsBoard's defaults and compiled them) as message classes."""
    compiler = context.compiler
    keys: ProtobufKeys = profile.format_keys

    def message_class(kind: str) -> Any:
        return compiler.message_class(getattr(keys, kind), kind)

    return ProtobufFormat(
        message_class(protoschema.TELEMETRY), message_class(protoschema.ATTRIBUTES),
        context.json, keys.enableCompatibilityWithJsonPayloadFormat,
        rpc_request_class=message_class(protoschema.RPC_REQUEST),
        rpc_response_class=message_class(protoschema.RPC_RESPONSE),
        fixed=compiler.fixed_messages(),
        json_downlinks=keys.useJsonPayloadFormatForDefaultDownlinkTopics)


FORMAT = PayloadFormatEntry(
    ProtobufFormat.name, build, payload_type="PROTOBUF", check=check_profile,
    keys=protoschema.KINDS, flags=FLAGS, startup="bridge.edge.protoc:protobuf_startup",
    settings=ProtobufKeys)
