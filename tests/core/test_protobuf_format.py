"""Protobuf uplinks as ThingsBoard turns them into JSON (its own golden cases included).

The schemas are compiled by protoc, as at start-up; the format itself is pure."""

import json
import shutil

import pytest

from bridge.core import codes
from bridge.core.formats import protoschema
from bridge.core.formats.json import JsonFormat
from bridge.core.formats.protobuf import ProtobufFormat, to_json
from bridge.edge import protoc

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

NOW = 1700000000.0

TS_VALUES = """syntax = "proto3";
package test;
message Values {
  string key1 = 1;
  bool key2 = 2;
  double key3 = 3;
  int32 key4 = 4;
}
message PostTelemetry {
  optional int64 ts = 1;
  Values values = 2;
}
"""

CUSTOM = """syntax = "proto3";
package custom;
enum Mode { MODE_OFF = 0; MODE_ECO = 1; MODE_FULL = 2; }
message Reading {
  int64 energy_total = 1;
  optional double voltage = 2;
  Mode mode = 3;
  repeated uint32 samples = 4;
  Location location = 5;
  optional float ratio = 6;
  double big = 7;
  message Location { double lat = 1; double lon = 2; }
}
"""

ONEOF = """syntax = "proto3";
package test;
message SubMessage { repeated string name = 1; }
message Choice {
  oneof payload { string name = 1; SubMessage subMessage = 2; }
}
"""


def cls(text, kind=protoschema.TELEMETRY):
    return protoc.message_class(text, kind)


def default_telemetry():
    return cls(protoschema.DEFAULTS[protoschema.TELEMETRY])


def fmt(telemetry=None, attributes=None, compatible=False, rpc_request=None,
        rpc_response=None, json_downlinks=False):
    return ProtobufFormat(telemetry or default_telemetry(),
                          attributes or cls(protoschema.DEFAULTS[protoschema.ATTRIBUTES],
                                            protoschema.ATTRIBUTES),
                          JsonFormat(), compatible,
                          rpc_request_class=rpc_request or cls(
                              protoschema.DEFAULTS[protoschema.RPC_REQUEST],
                              protoschema.RPC_REQUEST),
                          rpc_response_class=rpc_response or cls(
                              protoschema.DEFAULTS[protoschema.RPC_RESPONSE],
                              protoschema.RPC_RESPONSE),
                          fixed=protoc.fixed_messages(), json_downlinks=json_downlinks)


def sent(message):
    topic, body = message
    return topic, json.loads(body)


def test_golden_default_telemetry_schema():
    reading = default_telemetry()
    msg = reading(temperature=42.0)
    msg.innerObject.key4 = 7
    assert to_json(msg) == {"temperature": 42.0, "innerObject": {"key4": 7}}
    assert to_json(reading.FromString(b"")) == {}


def test_golden_ts_and_values_with_defaults_printed():
    post = cls(TS_VALUES)
    assert to_json(post(ts=10000, values={})) == {
        "ts": "10000", "values": {"key1": "", "key2": False, "key3": 0.0, "key4": 0}}
    # ... and the bridge reads the ts + values form from it, ts as a number
    topic, body = sent(fmt(post).telemetry("dev", post(ts=10000, values={"key4": 3})
                                           .SerializeToString(), NOW))
    assert (topic, body) == ("v1/gateway/telemetry", {"dev": [
        {"ts": 10000, "values": {"key1": "", "key2": False, "key3": 0.0, "key4": 3}}]})


def test_golden_explicit_presence_keeps_set_defaults():
    msg = default_telemetry()(temperature=0.0)
    msg.innerObject.key1 = ""
    msg.innerObject.key2 = False
    assert to_json(msg) == {"temperature": 0.0, "innerObject": {"key1": "", "key2": False}}


def test_golden_oneof():
    choice = cls(ONEOF, protoschema.ATTRIBUTES)
    assert to_json(choice(name="Bob")) == {"name": "Bob"}
    assert to_json(choice(subMessage={"name": ["Alice", "John"]})) == {
        "subMessage": {"name": ["Alice", "John"]}}


def test_custom_schema_camel_case_int64_strings_enums_repeated_nested():
    reading = cls(CUSTOM)
    msg = reading(energy_total=2 ** 40, mode=2, samples=[1, 2],
                  location={"lat": 1.5, "lon": -2.25})
    assert to_json(msg) == {"energyTotal": "1099511627776", "mode": "MODE_FULL",
                            "samples": [1, 2], "location": {"lat": 1.5, "lon": -2.25},
                            "big": 0.0}
    topic, body = sent(fmt(reading).telemetry("dev", msg.SerializeToString(), NOW))
    assert body == {"dev": [{"ts": int(NOW * 1000), "values": to_json(msg)}]}


def test_field_options_are_ignored_as_thingsboard_ignores_them():
    # ThingsBoard's parser drops json_name (and packed): the platform gets the default
    # lowerCamelCase key whatever the option says, nested messages included
    reading = cls('syntax = "proto3";\n'
                  'message Inner { int32 deep_value = 1 [json_name = "D"]; }\n'
                  'message Reading { double temp_c = 1 [json_name = "T"];\n'
                  '  repeated int32 raw_samples = 2 [packed = false]; Inner inner_part = 3; }\n')
    msg = reading(temp_c=1.5, raw_samples=[1, 2], inner_part={"deep_value": 3})
    assert to_json(msg) == {"tempC": 1.5, "rawSamples": [1, 2], "innerPart": {"deepValue": 3}}


def test_doubles_java_prints_in_e_notation_keep_their_long_typing():
    reading = cls(CUSTOM)
    doc = to_json(reading(big=1e7, voltage=12345678.5, ratio=3e7))
    assert doc["big"] == 10000000 and type(doc["big"]) is int       # Java: 1.0E7 -> LONG
    assert doc["voltage"] == 12345678.5 and type(doc["voltage"]) is float  # not integral
    assert doc["ratio"] == 30000000 and type(doc["ratio"]) is int
    small = to_json(reading(big=9999999.0))
    assert type(small["big"]) is float  # Java prints 9999999.0: a DOUBLE


def test_attributes_decode_with_the_attribute_schema():
    attributes = cls(protoschema.DEFAULTS[protoschema.ATTRIBUTES], protoschema.ATTRIBUTES)
    payload = attributes(firmwareVersion="1.2", serialNumber="SN-1").SerializeToString()
    topic, body, values = fmt().attributes("dev", payload)
    assert values == {"firmwareVersion": "1.2", "serialNumber": "SN-1"}
    assert (topic, json.loads(body)) == ("v1/gateway/attributes", {"dev": values})


def test_an_undecodable_payload_is_4_00_naming_the_schema():
    with pytest.raises(codes.BadRequest) as info:
        fmt().telemetry("dev", b"\xff\xff\xff", NOW)
    assert "telemetry: payload does not decode as telemetry.SensorDataReading" \
        in str(info.value)


def test_an_empty_message_is_4_00_no_values():
    with pytest.raises(codes.BadRequest, match="no values"):
        fmt().telemetry("dev", b"", NOW)


def test_json_compatibility_reads_an_undecodable_payload_as_json():
    topic, body = sent(fmt(compatible=True).telemetry("dev", b'{"temperature": 21.5}', NOW))
    assert body == {"dev": [{"ts": int(NOW * 1000), "values": {"temperature": 21.5}}]}
    topic, body, values = fmt(compatible=True).attributes("dev", b'{"serialNumber": "x"}')
    assert values == {"serialNumber": "x"}
    with pytest.raises(codes.BadRequest):
        fmt(compatible=False).telemetry("dev", b'{"temperature": 21.5}', NOW)


# -- ThingsBoard's fixed messages: claim, client-side RPC and its answer ------------------

def test_claim_is_read_with_the_fixed_claim_device_message():
    tb = protoc.fixed_messages()
    payload = tb.ClaimDevice(secretKey="s3cret", durationMs=2 ** 40).SerializeToString()
    assert sent(fmt().claim("dev", payload)) == (
        "v1/gateway/claim", {"dev": {"secretKey": "s3cret", "durationMs": 2 ** 40}})
    # an empty body is a claim with ThingsBoard's defaults, as with JSON
    assert sent(fmt().claim("dev", b"")) == (
        "v1/gateway/claim", {"dev": {"secretKey": "", "durationMs": 0}})
    with pytest.raises(codes.BadRequest, match="claim: payload does not decode as "
                                               "transportapi.ClaimDevice"):
        fmt().claim("dev", b'{"secretKey": "x"}')
    assert sent(fmt(compatible=True).claim("dev", b'{"secretKey": "x"}'))[1] == {
        "dev": {"secretKey": "x", "durationMs": 0}}


def test_client_rpc_is_read_with_the_fixed_rpc_request_params_as_json_text():
    rpc = protoc.fixed_messages().RpcRequest
    call = fmt().rpc_call
    assert call(rpc(method="getTime", params='{"tz": "UTC", "n": [1, 2]}')
                .SerializeToString()) == ("getTime", {"tz": "UTC", "n": [1, 2]})
    assert call(rpc(method="ping").SerializeToString()) == ("ping", None)  # unset: null
    assert call(rpc(method="m", params="42").SerializeToString()) == ("m", 42)
    # text that is not JSON stays a string (ThingsBoard's lenient parser)
    assert call(rpc(method="echo", params="hello there").SerializeToString()) == (
        "echo", "hello there")
    # params JSON nested past the depth limit is 4.00, as for a JSON device, not a string
    deep = "[" * 40 + "]" * 40
    with pytest.raises(codes.BadRequest, match="nested deeper"):
        call(rpc(method="m", params=deep).SerializeToString())
    with pytest.raises(codes.BadRequest, match="rpc: method is empty"):
        call(rpc(params="{}").SerializeToString())
    with pytest.raises(codes.BadRequest, match="does not decode as transportapi.RpcRequest"):
        call(b"\xff\xff")


def test_the_platforms_answer_goes_back_as_to_server_rpc_response_msg():
    tb = protoc.fixed_messages()
    protobuf = fmt()
    assert protobuf.content_format == codes.OCTET_STREAM
    body = protobuf.rpc_result(b'{"time":"12:00","zone":"\xc3\xa9"}')
    answer = tb.ToServerRpcResponseMsg.FromString(body)
    assert (answer.requestId, answer.payload, answer.error) == (
        0, '{"time":"12:00","zone":"\u00e9"}', "")
    # useJsonPayloadFormatForDefaultDownlinkTopics: the answer stays the platform's JSON
    plain = fmt(json_downlinks=True)
    assert plain.content_format == codes.APPLICATION_JSON
    assert plain.rpc_result(b'{"time":"12:00"}') == b'{"time":"12:00"}'


TREE = """syntax = "proto3";
package tree;
message Node { optional int32 v = 1; Node child = 2; repeated Node children = 3; }
"""


def nested(node, depth):
    root = msg = node(v=0)
    for level in range(1, depth):
        msg.child.v = level
        msg = msg.child
    return root.SerializeToString()


def test_protobuf_deeper_than_the_json_limit_is_4_00_like_json():
    """#27.10: the JSON of a message is held to limits.json_max_depth as a JSON upload is."""
    node = cls(TREE)
    uplinks = fmt(telemetry=node, rpc_response=cls(TREE, protoschema.RPC_RESPONSE))
    for depth in (32, 40):
        with pytest.raises(codes.BadRequest, match="tree.Node nested deeper than 32 levels"):
            uplinks.telemetry("Dev", nested(node, depth), NOW)
        with pytest.raises(codes.BadRequest, match="nested deeper than 32 levels"):
            uplinks.rpc_reply("Dev", 1, nested(node, depth))
    # 31 nodes: 32 levels with the empty "children" array every node prints
    topic, body = sent(uplinks.telemetry("Dev", nested(node, 31), NOW))
    assert topic == "v1/gateway/telemetry"
    strict = ProtobufFormat(node, node, JsonFormat(8), rpc_request_class=cls(
        protoschema.DEFAULTS[protoschema.RPC_REQUEST], protoschema.RPC_REQUEST),
        rpc_response_class=node, fixed=protoc.fixed_messages())
    with pytest.raises(codes.BadRequest, match="nested deeper than 8 levels"):
        strict.attributes("Dev", nested(node, 9))
    # a repeated message field is an array: two levels per element
    wide = node(v=1, children=[node(v=2, children=[node(v=3)])])
    with pytest.raises(codes.BadRequest, match="nested deeper than 4 levels"):
        ProtobufFormat(node, node, JsonFormat(4), rpc_request_class=cls(
            protoschema.DEFAULTS[protoschema.RPC_REQUEST], protoschema.RPC_REQUEST),
            rpc_response_class=node, fixed=protoc.fixed_messages()).telemetry(
                "Dev", wide.SerializeToString(), NOW)


def test_the_depth_a_schema_allows_is_worked_out_once():
    from bridge.core.formats.protojson import json_depth
    assert json_depth(default_telemetry().DESCRIPTOR) == 2
    assert json_depth(cls(CUSTOM).DESCRIPTOR) == 2  # repeated scalars, a message
    assert json_depth(cls(TS_VALUES).DESCRIPTOR) == 2
    assert json_depth(cls(TREE).DESCRIPTOR) is None  # contains itself
    shallow = fmt()
    assert not shallow._measured  # ThingsBoard's default schemas are never measured
