"""ThingsBoard's fixed Protocol Buffers messages on the CoAP path (spec thingsboard-coap.md
§8.1): what a PROTOBUF device sends and receives whatever its profile's schemas say.

The texts below declare the messages with ThingsBoard's field names and numbers (its
``transport.proto``, package ``transportapi``, and ``queue.proto``, package ``transport``),
only the ones a CoAP device sees. They are compiled by ``protoc`` at start, like a profile's
schemas (``bridge/edge/protoc.py``: ``fixed_messages``), into one pool of their own; this
module only holds the texts and turns the compiled files into message classes (no I/O).

* ``ClaimDevice``: a claiming request (``POST .../claim``).
* ``RpcRequest``: a client-side RPC (``POST .../rpc``); ``params`` is JSON text.
* ``ToServerRpcResponseMsg``: the platform's answer to it (``payload``: JSON text).
* ``ProvisionDeviceRequestMsg`` / ``ProvisionDeviceResponseMsg``: provisioning, when the
  request is not JSON.
* ``AttributeUpdateNotificationMsg``, ``GetAttributeResponseMsg`` with ``TsKvProto`` and
  ``KeyValueProto``: shared-attribute notifications and attribute reads.
"""

from __future__ import annotations

from typing import Any, Iterable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

TRANSPORT_API = """syntax = "proto3";
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

TRANSPORT = """syntax = "proto3";
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

TEXTS = (TRANSPORT_API, TRANSPORT)


class Messages:
    """The classes of the fixed messages, from the compiled files of ``TEXTS``."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]):
        pool = descriptor_pool.DescriptorPool()
        for n, file in enumerate(files):
            named = descriptor_pb2.FileDescriptorProto()
            named.CopyFrom(file)
            named.name = "thingsboard%d.proto" % n  # protoc names each text schema.proto
            pool.Add(named)

        def cls(name: str) -> Any:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

        self.ClaimDevice = cls("transportapi.ClaimDevice")
        self.RpcRequest = cls("transportapi.RpcRequest")
        self.KeyValueProto = cls("transport.KeyValueProto")
        self.TsKvProto = cls("transport.TsKvProto")
        self.AttributeUpdateNotificationMsg = cls("transport.AttributeUpdateNotificationMsg")
        self.GetAttributeResponseMsg = cls("transport.GetAttributeResponseMsg")
        self.ToServerRpcResponseMsg = cls("transport.ToServerRpcResponseMsg")
        self.ProvisionDeviceRequestMsg = cls("transport.ProvisionDeviceRequestMsg")
        self.ProvisionDeviceResponseMsg = cls("transport.ProvisionDeviceResponseMsg")
        self.KeyValueType = pool.FindEnumTypeByName("transport.KeyValueType")
        self.CredentialsType = pool.FindEnumTypeByName("transport.CredentialsType")
        self.ResponseStatus = pool.FindEnumTypeByName("transport.ResponseStatus")
