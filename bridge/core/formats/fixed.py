"""ThingsBoard's fixed messages on the CoAP path (spec §8.1), for PROTOBUF devices.

Attribute notifications, attribute-read answers, client-side RPC (request and answer),
claim and provisioning do not use a profile's schemas but ThingsBoard's own protos: the
parts of its ``queue.proto`` (package ``transport``) and ``transport.proto`` (package
``transportapi``) that a device sees, with ThingsBoard's field numbers. The texts below are
compiled by ``protoc`` at start like every profile schema (``bridge/edge/protoc.py``
``fixed_messages``), not built by hand, and their classes live in one pool of their own,
shared by every profile (their names never clash with a profile's: that has its pool).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

QUEUE_PROTO = """syntax = "proto3";
package transport;

enum KeyValueType {
  BOOLEAN_V = 0;
  LONG_V = 1;
  DOUBLE_V = 2;
  STRING_V = 3;
  JSON_V = 4;
}

message KeyValueProto {
  string key = 1;
  KeyValueType type = 2;
  bool bool_v = 3;
  int64 long_v = 4;
  double double_v = 5;
  string string_v = 6;
  string json_v = 7;
}

message TsKvProto {
  int64 ts = 1;
  KeyValueProto kv = 2;
  optional int64 version = 3;
}

message AttributeUpdateNotificationMsg {
  repeated TsKvProto sharedUpdated = 1;
  repeated string sharedDeleted = 2;
}

message GetAttributeResponseMsg {
  int32 requestId = 1;
  repeated TsKvProto clientAttributeList = 2;
  repeated TsKvProto sharedAttributeList = 3;
  bool isMultipleAttributesRequest = 4;
  string error = 5;
  bool sharedStateMsg = 6;
}

message ToServerRpcResponseMsg {
  int32 requestId = 1;
  string payload = 2;
  string error = 3;
}

enum CredentialsType {
  ACCESS_TOKEN = 0;
  X509_CERTIFICATE = 1;
  MQTT_BASIC = 2;
  LWM2M_CREDENTIALS = 3;
}

enum ResponseStatus {
  UNKNOWN = 0;
  SUCCESS = 1;
  NOT_FOUND = 2;
  FAILURE = 3;
}

message ProvisionDeviceCredentialsMsg {
  string provisionDeviceKey = 1;
  string provisionDeviceSecret = 2;
}

message ValidateDeviceTokenRequestMsg {
  string token = 1;
}

message ValidateDeviceX509CertRequestMsg {
  string hash = 1;
}

message ValidateBasicMqttCredRequestMsg {
  string clientId = 1;
  string userName = 2;
  string password = 3;
}

message CredentialsDataProto {
  ValidateDeviceTokenRequestMsg validateDeviceTokenRequestMsg = 1;
  ValidateDeviceX509CertRequestMsg validateDeviceX509CertRequestMsg = 2;
  ValidateBasicMqttCredRequestMsg validateBasicMqttCredRequestMsg = 3;
}

message ProvisionDeviceRequestMsg {
  string deviceName = 1;
  CredentialsType credentialsType = 2;
  ProvisionDeviceCredentialsMsg provisionDeviceCredentialsMsg = 3;
  CredentialsDataProto credentialsDataProto = 4;
  bool gateway = 5;
}

message ProvisionDeviceResponseMsg {
  ResponseStatus status = 1;
  CredentialsType credentialsType = 2;
  string credentialsValue = 3;
}
"""

TRANSPORT_API_PROTO = """syntax = "proto3";
package transportapi;

message ClaimDevice {
  string secretKey = 1;
  int64 durationMs = 2;
}

message RpcRequest {
  string method = 1;
  string params = 2;
}
"""

KIND = "fixed"  # for protoc.compile_schema: ThingsBoard's general rules, no profile shape

# (file name in the pool, text): the name keeps the two files apart in one pool
FILES: Tuple[Tuple[str, str], ...] = (("transport/queue.proto", QUEUE_PROTO),
                                      ("transportapi/transport.proto", TRANSPORT_API_PROTO))

MESSAGES = ("transport.KeyValueProto", "transport.TsKvProto",
            "transport.AttributeUpdateNotificationMsg", "transport.GetAttributeResponseMsg",
            "transport.ToServerRpcResponseMsg", "transport.ProvisionDeviceRequestMsg",
            "transport.ProvisionDeviceResponseMsg", "transportapi.ClaimDevice",
            "transportapi.RpcRequest")


class FixedMessages:
    """The classes of ThingsBoard's fixed messages, by short name
    (``fixed.AttributeUpdateNotificationMsg``), from the compiled ``FILES`` in their order."""

    KeyValueProto: Any
    TsKvProto: Any
    AttributeUpdateNotificationMsg: Any
    GetAttributeResponseMsg: Any
    ToServerRpcResponseMsg: Any
    ProvisionDeviceRequestMsg: Any
    ProvisionDeviceResponseMsg: Any
    ClaimDevice: Any
    RpcRequest: Any

    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto]):
        pool = descriptor_pool.DescriptorPool()
        for (name, _), compiled in zip(FILES, files):
            file = descriptor_pb2.FileDescriptorProto()
            file.CopyFrom(compiled)  # protoc named each one schema.proto
            file.name = name
            pool.Add(file)
        for full_name in MESSAGES:
            setattr(self, full_name.rsplit(".", 1)[1],
                    message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name)))
        kinds = pool.FindEnumTypeByName("transport.KeyValueType")
        self.BOOLEAN_V, self.LONG_V, self.DOUBLE_V, self.STRING_V, self.JSON_V = (
            kinds.values_by_name[n].number
            for n in ("BOOLEAN_V", "LONG_V", "DOUBLE_V", "STRING_V", "JSON_V"))
