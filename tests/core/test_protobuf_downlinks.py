"""Protobuf downlinks as ThingsBoard's CoAP transport writes them, and RPC replies decoded
with the profile's RPC response schema (ThingsBoard's own test cases included).

The bridge's messages are decoded here with classes the test builds itself (protoc and a
pool of its own) from its own copy of ThingsBoard's protos and of the profile schemas, so
a wrong field number in the bridge's copy fails the test. The format is pure; the core
tests drive a ``GatewayCore`` as tests/core/test_downstream_session.py does."""

import json
import shutil

import pytest

from bridge.core import codes
from bridge.core.actions import Device, Log, Notify, Publish, Reply
from bridge.core.formats import CannotEncode, protoschema
from bridge.core.formats.json import JsonFormat
from bridge.core.formats.protobuf import ProtobufFormat
from bridge.core.session import GatewayCore
from bridge.edge import protoc
from coreconfig import core_config, handled
from protobuild import TB_QUEUE, message_class
from test_downstream_session import (GATEWAY_RPC, answer, attribute_requests, get, observe_rpc,
                                     of, post, push, run, server_rpc, start_read)

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

NOW = 1_700_000_000.5
TS = int(NOW * 1000)

# ThingsBoard's AbstractCoapServerSideRpcIntegrationTest schema (a message-typed params).
TB_RPC_REQUEST = """syntax ="proto3";
package rpc;

message RpcRequestMsg {
  optional string method = 1;
  optional int32 requestId = 2;
  Params params = 3;

  message Params {
      optional string pin = 1;
      optional int32 value = 2;
   }
}
"""

CUSTOM_RPC_REQUEST = """syntax = "proto3";
package ctl;
message Command {
  string method = 1;
  int32 requestId = 2;
  Args params = 3;
  message Args { string label = 1; bool enabled = 2; int64 big_count = 3;
                 repeated string tags = 4; Inner inner = 5; }
  message Inner { string note = 1; }
}
"""

CUSTOM_RPC_RESPONSE = """syntax = "proto3";
package ctl;
enum State { STATE_UNKNOWN = 0; STATE_DONE = 1; }
message Answer { State state = 1; int64 took_ms = 2; optional string detail = 3; }
"""


def cls(text, kind):
    return protoc.message_class(text, kind)


def fmt(rpc_request=None, rpc_response=None, json_downlinks=False, compatible=False):
    return ProtobufFormat(
        cls(protoschema.DEFAULTS[protoschema.TELEMETRY], protoschema.TELEMETRY),
        cls(protoschema.DEFAULTS[protoschema.ATTRIBUTES], protoschema.ATTRIBUTES),
        JsonFormat(), compatible,
        rpc_request_class=cls(rpc_request or protoschema.DEFAULTS[protoschema.RPC_REQUEST],
                              protoschema.RPC_REQUEST),
        rpc_response_class=cls(rpc_response or protoschema.DEFAULTS[protoschema.RPC_RESPONSE],
                               protoschema.RPC_RESPONSE),
        fixed=protoc.fixed_messages(), json_downlinks=json_downlinks)


@pytest.fixture
def tb(tmp_path):
    """The test's own classes of ThingsBoard's fixed messages."""
    class TB:
        Update = message_class(tmp_path, TB_QUEUE, "transport.AttributeUpdateNotificationMsg")
        Response = message_class(tmp_path, TB_QUEUE, "transport.GetAttributeResponseMsg")
    return TB


def kvs(items):
    """TsKvProto list -> [(key, type name, value)], as ThingsBoard's test compares them."""
    out = []
    for item in items:
        kv = item.kv
        kind = kv.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[kv.type].name
        value = {"BOOLEAN_V": kv.bool_v, "LONG_V": kv.long_v, "DOUBLE_V": kv.double_v,
                 "STRING_V": kv.string_v, "JSON_V": kv.json_v}[kind]
        out.append((kv.key, kind, value))
    return out


# ThingsBoard's AbstractCoapAttributesIntegrationTest: SHARED_ATTRIBUTES_PAYLOAD and the
# TsKvProto list it expects in the notification (getTsKvProtoList("shared")).
TB_SHARED = {"sharedStr": "value1", "sharedBool": True, "sharedDbl": 42.0, "sharedLong": 73,
             "sharedJson": {"someNumber": 42, "someArray": [1, 2, 3],
                            "someNestedObject": {"key": "value"}}}
TB_SHARED_KVS = [("sharedStr", "STRING_V", "value1"), ("sharedBool", "BOOLEAN_V", True),
                 ("sharedDbl", "DOUBLE_V", 42.0), ("sharedLong", "LONG_V", 73),
                 ("sharedJson", "JSON_V",
                  '{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}')]


# -- attribute notifications and reads ------------------------------------------------

def test_golden_attribute_update_notification_is_typed_ts_kv_protos(tb):
    message = tb.Update.FromString(fmt().attribute_update(TB_SHARED, NOW))
    assert kvs(message.sharedUpdated) == TB_SHARED_KVS
    assert [item.ts for item in message.sharedUpdated] == [TS] * 5  # the receipt time
    assert not any(item.HasField("version") for item in message.sharedUpdated)
    assert list(message.sharedDeleted) == []


def test_golden_deleted_attributes_and_the_empty_first_state(tb):
    message = tb.Update.FromString(fmt().attribute_update({"deleted": ["sharedJson"]}, NOW))
    assert (list(message.sharedUpdated), list(message.sharedDeleted)) == ([], ["sharedJson"])
    assert fmt().attribute_update({}, NOW) == b""  # ThingsBoard: EMPTY_PAYLOAD
    both = tb.Update.FromString(fmt().attribute_update({"a": "x", "deleted": ["b", 3]}, NOW))
    assert (kvs(both.sharedUpdated), list(both.sharedDeleted)) == (
        [("a", "STRING_V", "x")], ["b"])


def test_values_no_long_holds_and_nulls_go_as_json_text(tb):
    message = tb.Update.FromString(fmt().attribute_update(
        {"huge": 2 ** 63, "low": -2 ** 63, "none": None, "list": ["a", 1]}, NOW))
    assert kvs(message.sharedUpdated) == [
        ("huge", "JSON_V", "9223372036854775808"), ("low", "LONG_V", -2 ** 63),
        ("none", "JSON_V", "null"), ("list", "JSON_V", '["a",1]')]


def test_golden_attribute_read_is_a_get_attribute_response(tb):
    client = {"clientStr": "value1", "clientLong": 73}
    message = tb.Response.FromString(fmt().attributes_response(client, TB_SHARED, NOW))
    assert kvs(message.clientAttributeList) == [("clientStr", "STRING_V", "value1"),
                                                ("clientLong", "LONG_V", 73)]
    assert kvs(message.sharedAttributeList) == TB_SHARED_KVS
    assert (message.requestId, message.sharedStateMsg, message.error) == (0, False, "")
    only_shared = tb.Response.FromString(fmt().attributes_response({}, {"s": 1}, NOW))
    assert (len(only_shared.clientAttributeList), len(only_shared.sharedAttributeList)) == (0, 1)


def test_json_downlinks_keep_their_bytes():
    json_fmt = JsonFormat()
    assert json_fmt.attribute_update({"a": 1, "deleted": ["b"]}, NOW) == \
        b'{"a":1,"deleted":["b"]}'
    assert json_fmt.attributes_response({"c": True}, {"s": "x"}, NOW) == \
        b'{"client":{"c":true},"shared":{"s":"x"}}'
    assert json_fmt.attributes_response({}, {"s": "x"}, NOW) == b'{"shared":{"s":"x"}}'
    assert json_fmt.server_rpc(7, "setGpio", {"pin": 4}) == \
        b'{"id":7,"method":"setGpio","params":{"pin":4}}'
    assert json_fmt.content_format == codes.APPLICATION_JSON == 50


def test_content_format_is_42_unless_downlinks_stay_json():
    assert fmt().content_format == codes.OCTET_STREAM == 42
    json_down = fmt(json_downlinks=True)
    assert json_down.content_format == 50
    assert json_down.attribute_update({"a": 1}, NOW) == b'{"a":1}'
    assert json_down.attributes_response({}, {"s": 1}, NOW) == b'{"shared":{"s":1}}'
    assert json_down.server_rpc(3, "m", {"x": [1]}) == b'{"id":3,"method":"m","params":{"x":[1]}}'


# -- server-side RPC requests -----------------------------------------------------------

def test_golden_server_rpc_with_thingsboards_message_params_schema(tmp_path):
    body = fmt(TB_RPC_REQUEST).server_rpc(5, "setGpio", {"pin": "23", "value": 1})
    request = message_class(tmp_path, TB_RPC_REQUEST, "rpc.RpcRequestMsg").FromString(body)
    assert (request.method, request.requestId) == ("setGpio", 5)
    assert (request.params.pin, request.params.value) == ("23", 1)


def test_server_rpc_with_the_default_schema_takes_primitives_as_text_as_java_does(tmp_path):
    request_class = message_class(tmp_path, protoschema.DEFAULTS[protoschema.RPC_REQUEST],
                              "rpc.RpcRequestMsg")

    def params(value):
        message = request_class.FromString(fmt().server_rpc(9, "m", value))
        assert (message.method, message.requestId) == ("m", 9)
        return message.params if message.HasField("params") else None
    assert params("on") == "on"
    assert params(42) == "42"  # Java's parser reads a number into a string field
    assert params(True) == "true"
    assert params(1.5) == "1.5"
    assert params(None) is None  # null: left unset


def test_an_object_into_the_default_string_params_cannot_be_encoded():
    with pytest.raises(CannotEncode, match="rpc.RpcRequestMsg"):
        fmt().server_rpc(9, "setGpio", {"pin": 4})
    with pytest.raises(CannotEncode):
        fmt().server_rpc(9, "m", [1, 2])


def test_server_rpc_custom_schema_nested_coercion_unknown_fields_and_names(tmp_path):
    command = message_class(tmp_path, CUSTOM_RPC_REQUEST, "ctl.Command")
    body = fmt(CUSTOM_RPC_REQUEST).server_rpc(11, "configure", {
        "label": 7, "enabled": "true", "bigCount": "12345678901", "tags": ["a", 2, False],
        "inner": {"note": 3.25}, "unknown": {"x": 1}})
    message = command.FromString(body)
    assert (message.method, message.requestId) == ("configure", 11)
    args = message.params
    assert (args.label, args.enabled, args.big_count) == ("7", True, 12345678901)
    assert (list(args.tags), args.inner.note) == (["a", "2", "false"], "3.25")
    by_proto_name = command.FromString(fmt(CUSTOM_RPC_REQUEST).server_rpc(
        12, "m", {"big_count": 5}))
    assert by_proto_name.params.big_count == 5
    with pytest.raises(CannotEncode):
        fmt(CUSTOM_RPC_REQUEST).server_rpc(13, "m", {"enabled": "yes"})
    with pytest.raises(CannotEncode):  # Python alone would read its letters as names
        fmt(CUSTOM_RPC_REQUEST).server_rpc(14, "m", "not an object")
    with pytest.raises(CannotEncode):
        fmt(CUSTOM_RPC_REQUEST).server_rpc(15, "m", {"tags": "one"})


# -- RPC replies (uplink) -----------------------------------------------------------------

def test_golden_rpc_reply_with_the_default_response_schema(tmp_path):
    response = message_class(tmp_path, protoschema.DEFAULTS[protoschema.RPC_RESPONSE],
                         "rpc.RpcResponseMsg")
    device_response = '{"value1":"A","value2":"B"}'  # ThingsBoard's DEVICE_RESPONSE
    topic, body = fmt().rpc_reply("Dev P", 4, response(payload=device_response)
                                  .SerializeToString())
    # ThingsBoard's expected RPC result: {"payload":"{\"value1\":\"A\",\"value2\":\"B\"}"}
    assert (topic, json.loads(body)) == ("v1/gateway/rpc", {
        "device": "Dev P", "id": 4, "data": {"payload": device_response}})


def test_rpc_reply_custom_schema_printed_as_thingsboard_prints(tmp_path):
    answer_class = message_class(tmp_path, CUSTOM_RPC_RESPONSE, "ctl.Answer")
    payload = answer_class(state=1, took_ms=2 ** 40).SerializeToString()
    topic, body = fmt(rpc_response=CUSTOM_RPC_RESPONSE).rpc_reply("Dev P", 8, payload)
    assert json.loads(body)["data"] == {"state": "STATE_DONE", "tookMs": "1099511627776"}


def test_an_undecodable_rpc_reply_is_4_00_or_json_with_compatibility():
    with pytest.raises(codes.BadRequest, match="rpc reply: payload does not decode as "
                                               "rpc.RpcResponseMsg"):
        fmt().rpc_reply("Dev P", 1, b"\xff\xff")
    topic, body = fmt(compatible=True).rpc_reply("Dev P", 1, b'{"ok": true}')
    assert json.loads(body) == {"device": "Dev P", "id": 1, "data": {"ok": True}}


# -- through the core ---------------------------------------------------------------------------

def pb_core(rpc_request=TB_RPC_REQUEST, json_downlinks=False):
    """A core whose "pb" devices speak protobuf (Dev A), linked, Dev A connected."""
    pb = fmt(rpc_request, json_downlinks=json_downlinks)
    core = GatewayCore(core_config(puback_timeout=10, idle_timeout=600, request_timeout=10),
                       {"tok": Device("Dev A", "pb")}.get,
                       format_of=lambda device_type: pb if device_type == "pb" else JsonFormat())
    core.on_link_up(NOW)
    seen = run(core, handled(core, post(900, "telemetry",
                                        pb.telemetry_class(temperature=1.0).SerializeToString()),
                             NOW))
    assert of(seen, Reply) == [Reply(900, codes.CREATED)]
    return core


def test_core_notifies_protobuf_attributes_with_content_format_42(tb):
    core = pb_core()
    seen = run(core, handled(core, get(50, "attributes", observe=0, token=b"\xa1"), NOW))
    [discover] = attribute_requests(seen)
    [scoped] = attribute_requests(answer(core, discover, NOW, values={"s": 2, "c": True}))
    [first] = answer(core, scoped, NOW, values={"s": 2})
    assert first.content_format == 42
    assert kvs(tb.Update.FromString(first.payload).sharedUpdated) == [("s", "LONG_V", 2)]
    [notify] = push(core, {"mode": "eco", "deleted": ["s"]})
    assert isinstance(notify, Notify) and notify.content_format == 42
    update = tb.Update.FromString(notify.payload)
    assert (kvs(update.sharedUpdated), list(update.sharedDeleted)) == (
        [("mode", "STRING_V", "eco")], ["s"])


def test_core_answers_a_protobuf_read_with_content_format_42(tb):
    core = pb_core()
    bodies = start_read(core, 1, ("sharedKeys=s",))
    [reply] = answer(core, bodies[0], NOW, value=5)
    assert (codes.dotted(reply.code), reply.content_format) == ("2.05", 42)
    assert kvs(tb.Response.FromString(reply.payload).sharedAttributeList) == [("s", "LONG_V", 5)]


def test_core_rpc_that_does_not_fit_gets_thingsboards_error_and_the_relation_stays(tmp_path):
    core = pb_core()
    observe_rpc(core)
    seen = run(core, server_rpc(core, 21, "setGpio", params="not an object"))
    [error] = [p for p in of(seen, Publish) if p.topic == GATEWAY_RPC]
    assert json.loads(error.payload) == {"device": "Dev A", "id": 21, "data": {
        "error": "Failed to convert device RPC command to CoAP msg"}}
    assert of(seen, Notify) == []
    [log] = [a for a in seen if isinstance(a, Log)]
    assert log.level == "warn" and "rpc.RpcRequestMsg" in log.fields["reason"]
    [notify] = of(run(core, server_rpc(core, 22, "setGpio", {"pin": "7", "value": 0})), Notify)
    request = message_class(tmp_path, TB_RPC_REQUEST, "rpc.RpcRequestMsg").FromString(notify.payload)
    assert (notify.content_format, request.requestId, request.params.pin) == (42, 22, "7")


def test_core_rpc_waiting_for_an_observer_is_written_when_it_registers():
    core = pb_core()
    assert of(server_rpc(core, 31, "setGpio", params=[1]), Publish) == []  # waits
    seen = observe_rpc(core)
    assert [json.loads(p.payload)["data"] for p in of(seen, Publish)
            if p.topic == GATEWAY_RPC] == [{"error": "Failed to convert device RPC command "
                                                     "to CoAP msg"}]
    assert of(seen, Notify) == []


def test_core_with_json_downlinks_notifies_json_with_50():
    core = pb_core(json_downlinks=True)
    observe_rpc(core)
    [notify] = of(run(core, server_rpc(core, 41, "setGpio", {"pin": {"deep": 1}})), Notify)
    assert notify.content_format == 50
    assert json.loads(notify.payload) == {"id": 41, "method": "setGpio",
                                          "params": {"pin": {"deep": 1}}}
