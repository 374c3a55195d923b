"""Device-profile schemas (Protocol Buffers): ThingsBoard's rules, checked on descriptors.

A schema's text is compiled by ``protoc`` at start (``bridge/edge/protoc.py``) into a
``FileDescriptorSet`` with source positions; here, with no I/O, the compiled file is checked
against what ThingsBoard accepts in a device profile, and its message class is built, one
``DescriptorPool`` per schema (two profiles may both define ``telemetry.SensorDataReading``).

ThingsBoard's rules (its profile validator and schema parser): proto3 only; no imports, file,
message or enum options, extensions, ``reserved``, groups, ``required``, defaults or maps; the
last top-level message is the one used; a telemetry message of exactly ``ts`` and ``values``
declares ``optional int64 ts`` and a message-typed ``values``; an RPC request message has
exactly ``method`` (string), ``requestId`` (int32) and ``params``, none repeated.
``oneof`` and field options (``json_name``, ``packed``) are accepted, and ignored as
ThingsBoard ignores them (``file_of``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# The schema kinds of a profile: the key ThingsBoard gives each one.
TELEMETRY = "deviceTelemetryProtoSchema"
ATTRIBUTES = "deviceAttributesProtoSchema"
RPC_REQUEST = "deviceRpcRequestProtoSchema"
RPC_RESPONSE = "deviceRpcResponseProtoSchema"
KINDS = (TELEMETRY, ATTRIBUTES, RPC_REQUEST, RPC_RESPONSE)

# ThingsBoard's defaults, used where a PROTOBUF profile leaves a schema out.
DEFAULTS = {
    TELEMETRY: """syntax ="proto3";
package telemetry;

message SensorDataReading {

  optional double temperature = 1;
  optional double humidity = 2;
  InnerObject innerObject = 3;

  message InnerObject {
    optional string key1 = 1;
    optional bool key2 = 2;
    optional double key3 = 3;
    optional int32 key4 = 4;
    optional string key5 = 5;
  }
}
""",
    ATTRIBUTES: """syntax ="proto3";
package attributes;

message SensorConfiguration {
  optional string firmwareVersion = 1;
  optional string serialNumber = 2;
}
""",
    RPC_REQUEST: """syntax ="proto3";
package rpc;

message RpcRequestMsg {
  optional string method = 1;
  optional int32 requestId = 2;
  optional string params = 3;
}
""",
    RPC_RESPONSE: """syntax ="proto3";
package rpc;

message RpcResponseMsg {
  optional string payload = 1;
}
""",
}

Problem = Tuple[int, int, str]  # line, column (1-based; 0 when unknown), what is wrong

F = descriptor_pb2.FieldDescriptorProto
# Field numbers inside descriptor.proto, for source positions (SourceCodeInfo paths).
_FILE_MESSAGE, _FILE_ENUM, _FILE_EXTENSION, _FILE_DEPENDENCY, _FILE_OPTIONS = 4, 5, 7, 3, 8
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_EXT_RANGE, _MSG_EXTENSION = 2, 3, 4, 5, 6
_MSG_OPTIONS, _MSG_RESERVED_RANGE, _MSG_RESERVED_NAME = 7, 9, 10
_ENUM_OPTIONS = 3


class _Positions:
    """Source positions of a compiled file: a descriptor path -> (line, column), 1-based."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto):
        self.spans: Dict[Tuple[int, ...], Tuple[int, int]] = {}
        for location in file.source_code_info.location:
            path = tuple(location.path)
            if path not in self.spans and len(location.span) >= 2:
                self.spans[path] = (location.span[0] + 1, location.span[1] + 1)

    def at(self, path: Sequence[int], text: str) -> Problem:
        path = tuple(path)
        while path and path not in self.spans:
            path = path[:-1]
        line, column = self.spans.get(path, (0, 0))
        return line, column, text


def _check_message(msg: descriptor_pb2.DescriptorProto, path: Tuple[int, ...],
                   where: _Positions, problems: List[Problem]) -> None:
    name = msg.name
    maps = {nested.name for nested in msg.nested_type if nested.options.map_entry}
    if msg.HasField("options"):
        problems.append(where.at(path + (_MSG_OPTIONS,), "message %s: options are not "
                                                         "supported" % name))
    if msg.extension_range or msg.extension:
        problems.append(where.at(path + (_MSG_EXT_RANGE,) if msg.extension_range
                                 else path + (_MSG_EXTENSION,),
                                 "message %s: extensions are not supported" % name))
    if msg.reserved_range or msg.reserved_name:
        problems.append(where.at(path + ((_MSG_RESERVED_RANGE,) if msg.reserved_range
                                         else (_MSG_RESERVED_NAME,)),
                                 "message %s: reserved is not supported" % name))
    for n, fld in enumerate(msg.field):
        at = path + (_MSG_FIELD, n)
        if fld.type == F.TYPE_GROUP:
            problems.append(where.at(at, "field %s: groups are not supported" % fld.name))
        if fld.label == F.LABEL_REQUIRED:
            problems.append(where.at(at, "field %s: required is not supported" % fld.name))
        if fld.type == F.TYPE_MESSAGE and fld.type_name.rsplit(".", 1)[-1] in maps:
            problems.append(where.at(at, "field %s: maps are not supported" % fld.name))
        if fld.HasField("default_value"):
            problems.append(where.at(at, "field %s: default values are not supported"
                                     % fld.name))
    for n, nested in enumerate(msg.nested_type):
        if not nested.options.map_entry:
            _check_message(nested, path + (_MSG_NESTED, n), where, problems)
    for n, enum in enumerate(msg.enum_type):
        _check_enum(enum, path + (_MSG_ENUM, n), where, problems)


def _check_enum(enum: descriptor_pb2.EnumDescriptorProto, path: Tuple[int, ...],
                where: _Positions, problems: List[Problem]) -> None:
    if enum.HasField("options"):
        problems.append(where.at(path + (_ENUM_OPTIONS,),
                                 "enum %s: options are not supported" % enum.name))


def _fields(msg: descriptor_pb2.DescriptorProto) -> Dict[str, descriptor_pb2.FieldDescriptorProto]:
    return {fld.name: fld for fld in msg.field}


def _check_shape(kind: str, msg: descriptor_pb2.DescriptorProto, path: Tuple[int, ...],
                 where: _Positions, problems: List[Problem]) -> None:
    fields = _fields(msg)
    if kind == TELEMETRY and set(fields) == {"ts", "values"}:
        ts, values = fields["ts"], fields["values"]
        if not (ts.proto3_optional and ts.type == F.TYPE_INT64
                and ts.label != F.LABEL_REPEATED):
            problems.append(where.at(path, "message %s: with ts and values, ts must be "
                                           "declared 'optional int64 ts'" % msg.name))
        if values.type != F.TYPE_MESSAGE or values.label == F.LABEL_REPEATED:
            problems.append(where.at(path, "message %s: with ts and values, values must be "
                                           "a message" % msg.name))
    if kind == RPC_REQUEST:
        wanted = {"method": F.TYPE_STRING, "requestId": F.TYPE_INT32, "params": None}
        ok = set(fields) == set(wanted) and all(
            fields[name].label != F.LABEL_REPEATED
            and (kind_ is None or fields[name].type == kind_)
            for name, kind_ in wanted.items())
        if not ok:
            problems.append(where.at(path, "message %s: an RPC request message has exactly "
                                           "the fields method (string), requestId (int32) "
                                           "and params, none repeated" % msg.name))


def check(file: descriptor_pb2.FileDescriptorProto, kind: str) -> List[Problem]:
    """What ThingsBoard would refuse in the compiled schema ``file`` of ``kind``."""
    where = _Positions(file)
    problems: List[Problem] = []
    if file.syntax != "proto3":
        problems.append((1, 1, 'the schema must start with syntax = "proto3";'))
    for n, _ in enumerate(file.dependency):
        problems.append(where.at((_FILE_DEPENDENCY, n), "imports are not supported"))
    if file.HasField("options"):
        problems.append(where.at((_FILE_OPTIONS,), "file options are not supported"))
    for n, _ in enumerate(file.extension):
        problems.append(where.at((_FILE_EXTENSION, n), "extensions are not supported"))
    for n, msg in enumerate(file.message_type):
        _check_message(msg, (_FILE_MESSAGE, n), where, problems)
    for n, enum in enumerate(file.enum_type):
        _check_enum(enum, (_FILE_ENUM, n), where, problems)
    if not file.message_type:
        problems.append((1, 1, "the schema defines no message"))
    elif not problems:
        last = len(file.message_type) - 1
        _check_shape(kind, file.message_type[last], (_FILE_MESSAGE, last), where, problems)
    return problems


def file_of(descriptor_set: bytes) -> descriptor_pb2.FileDescriptorProto:
    """The one file of a compiled descriptor set (``protoc --descriptor_set_out``), with
    field options dropped as ThingsBoard's schema parser drops them: a ``json_name``
    does not rename a field in the JSON the platform gets (every field prints under
    protobuf's default lowerCamelCase name), and ``packed`` does not change encoding."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
    file = files[len(files) - 1]
    for message in file.message_type:
        _ignore_field_options(message)
    return file


def _ignore_field_options(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.json_name = default_json_name(field.name)
        field.ClearField("options")
    for nested in message.nested_type:
        _ignore_field_options(nested)


def default_json_name(name: str) -> str:
    """protobuf's JSON name of field ``name`` when no option says otherwise: each letter
    after an underscore upper-cased, the underscores dropped (``temp_c`` -> ``tempC``)."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def message_class(file: descriptor_pb2.FileDescriptorProto) -> Any:
    """The class of the schema's last top-level message, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    name = file.message_type[len(file.message_type) - 1].name
    full_name = "%s.%s" % (file.package, name) if file.package else name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def describe(problem: Problem) -> str:
    line, column, text = problem
    return "line %d, column %d: %s" % (line, column, text) if line else text

