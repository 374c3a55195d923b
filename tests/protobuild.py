"""The tests' own build of .proto text (protoc, a pool of its own, the message's class),
independent of the bridge's compiler, and the test's own copy of ThingsBoard's queue.proto
messages a CoAP device sees (spec §8.1): a wrong field number in the bridge's copy fails
the tests that decode its bytes with this one."""

from __future__ import annotations

import subprocess

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

TB_QUEUE = """syntax = "proto3";
package transport;
enum KeyValueType { BOOLEAN_V = 0; LONG_V = 1; DOUBLE_V = 2; STRING_V = 3; JSON_V = 4; }
message KeyValueProto { string key = 1; KeyValueType type = 2; bool bool_v = 3; int64 long_v = 4;
  double double_v = 5; string string_v = 6; string json_v = 7; }
message TsKvProto { int64 ts = 1; KeyValueProto kv = 2; optional int64 version = 3; }
message AttributeUpdateNotificationMsg { repeated TsKvProto sharedUpdated = 1;
  repeated string sharedDeleted = 2; }
message GetAttributeResponseMsg { int32 requestId = 1; repeated TsKvProto clientAttributeList = 2;
  repeated TsKvProto sharedAttributeList = 3; bool isMultipleAttributesRequest = 4;
  string error = 5; bool sharedStateMsg = 6; }
"""


def message_class(tmp_path, text, name):
    """The class of message ``name`` (full name) of ``text``, built in ``tmp_path``."""
    source = tmp_path / ("%s.proto" % name.replace(".", "_"))
    source.write_text(text)
    out = tmp_path / ("%s.pb" % name.replace(".", "_"))
    subprocess.run(["protoc", "--descriptor_set_out=%s" % out, "-I", str(tmp_path),
                    str(source)], check=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0])
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
