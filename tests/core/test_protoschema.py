"""ThingsBoard's schema rules, checked on descriptors (no compiler needed)."""

from google.protobuf import descriptor_pb2

from bridge.core.formats import protoschema
from bridge.core.formats.protoschema import ATTRIBUTES, RPC_REQUEST, TELEMETRY

F = descriptor_pb2.FieldDescriptorProto


def make_file(*messages, syntax="proto3", package="p"):
    file = descriptor_pb2.FileDescriptorProto(name="schema.proto", package=package,
                                              syntax=syntax)
    for msg in messages:
        file.message_type.add().CopyFrom(msg)
    return file


def message(name, *fields):
    msg = descriptor_pb2.DescriptorProto(name=name)
    for number, (field_name, kind, extra) in enumerate(fields, 1):
        fld = msg.field.add(name=field_name, number=number, type=kind,
                            label=extra.pop("label", F.LABEL_OPTIONAL), **extra)
        if fld.proto3_optional:
            msg.oneof_decl.add(name="_" + field_name)
            fld.oneof_index = len(msg.oneof_decl) - 1
    return msg


def texts(file, kind=ATTRIBUTES):
    return [text for _, _, text in protoschema.check(file, kind)]


def test_a_plain_proto3_message_passes():
    assert texts(make_file(message("A", ("a", F.TYPE_INT32, {})))) == []


def test_proto2_is_refused():
    assert texts(make_file(message("A", ("a", F.TYPE_INT32, {})), syntax="proto2")) \
        == ['the schema must start with syntax = "proto3";']


def test_imports_options_extensions_reserved_required_defaults_are_refused():
    file = make_file(message("A", ("a", F.TYPE_INT32, {"label": F.LABEL_REQUIRED}),
                             ("b", F.TYPE_STRING, {"default_value": "x"})))
    file.dependency.append("other.proto")
    file.options.java_package = "x"
    msg = file.message_type[0]
    msg.options.deprecated = True
    msg.reserved_range.add(start=9, end=10)
    msg.extension_range.add(start=100, end=200)
    found = texts(file)
    for text in ("imports are not supported", "file options are not supported",
                 "message A: options are not supported", "message A: reserved is not supported",
                 "message A: extensions are not supported", "field a: required is not supported",
                 "field b: default values are not supported"):
        assert text in found


def test_a_map_field_is_refused():
    msg = message("A", ("m", F.TYPE_MESSAGE, {"label": F.LABEL_REPEATED,
                                              "type_name": ".p.A.MEntry"}))
    entry = msg.nested_type.add(name="MEntry")
    entry.options.map_entry = True
    assert texts(make_file(msg)) == ["field m: maps are not supported"]


def test_enum_options_are_refused_but_oneof_is_accepted():
    msg = message("A", ("a", F.TYPE_STRING, {"oneof_index": 0}))
    msg.oneof_decl.add(name="choice")
    enum = msg.enum_type.add(name="E")
    enum.value.add(name="ZERO", number=0)
    assert texts(make_file(msg)) == []
    enum.options.allow_alias = True
    assert texts(make_file(msg)) == ["enum E: options are not supported"]


def test_a_telemetry_ts_values_message_needs_optional_int64_ts_and_a_message_values():
    values = message("Values", ("v", F.TYPE_DOUBLE, {}))
    good = message("T", ("ts", F.TYPE_INT64, {"proto3_optional": True}),
                   ("values", F.TYPE_MESSAGE, {"type_name": ".p.Values"}))
    assert texts(make_file(values, good), TELEMETRY) == []
    plain_ts = message("T", ("ts", F.TYPE_INT64, {}),
                       ("values", F.TYPE_MESSAGE, {"type_name": ".p.Values"}))
    assert texts(make_file(values, plain_ts), TELEMETRY) == [
        "message T: with ts and values, ts must be declared 'optional int64 ts'"]
    scalar_values = message("T", ("ts", F.TYPE_INT64, {"proto3_optional": True}),
                            ("values", F.TYPE_STRING, {}))
    assert texts(make_file(scalar_values), TELEMETRY) == [
        "message T: with ts and values, values must be a message"]
    # the rule is the telemetry schema's only
    assert texts(make_file(values, plain_ts), ATTRIBUTES) == []


def test_only_the_last_top_level_message_is_checked_for_its_shape():
    rpc = message("RpcRequestMsg", ("method", F.TYPE_STRING, {}),
                  ("requestId", F.TYPE_INT32, {}), ("params", F.TYPE_MESSAGE,
                                                    {"type_name": ".p.Params"}))
    params = message("Params", ("x", F.TYPE_INT32, {}))
    assert texts(make_file(params, rpc), RPC_REQUEST) == []
    assert texts(make_file(rpc, params), RPC_REQUEST) == [
        "message Params: an RPC request message has exactly the fields method (string), "
        "requestId (int32) and params, none repeated"]


def test_an_rpc_request_with_a_wrong_type_or_a_repeated_field_is_refused():
    wrong = message("R", ("method", F.TYPE_STRING, {}), ("requestId", F.TYPE_INT64, {}),
                    ("params", F.TYPE_STRING, {}))
    repeated = message("R", ("method", F.TYPE_STRING, {}), ("requestId", F.TYPE_INT32, {}),
                       ("params", F.TYPE_STRING, {"label": F.LABEL_REPEATED}))
    assert len(texts(make_file(wrong), RPC_REQUEST)) == 1
    assert len(texts(make_file(repeated), RPC_REQUEST)) == 1


def test_a_schema_without_a_message_is_refused():
    assert texts(make_file()) == ["the schema defines no message"]


def test_positions_come_from_the_source_info():
    file = make_file(message("A", ("a", F.TYPE_INT32, {"label": F.LABEL_REQUIRED})))
    loc = file.source_code_info.location.add()
    loc.path.extend([4, 0, 2, 0])
    loc.span.extend([2, 4, 20])
    assert protoschema.check(file, ATTRIBUTES) == [(3, 5, "field a: required is not supported")]
    assert protoschema.describe((3, 5, "x")) == "line 3, column 5: x"


def test_two_schemas_may_define_the_same_message_name():
    one = make_file(message("SensorDataReading", ("a", F.TYPE_INT32, {})), package="telemetry")
    two = make_file(message("SensorDataReading", ("b", F.TYPE_STRING, {})), package="telemetry")
    first, second = protoschema.message_class(one), protoschema.message_class(two)
    assert first(a=1).SerializeToString() == b"\x08\x01"
    assert second(b="x").SerializeToString() == b"\x0a\x01x"
