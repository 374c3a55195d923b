"""The uplink printer (formats/protojson.py) gives exactly the document protobuf's own
MessageToDict gives (with the platform's number typing), key order included, for every
field kind a ThingsBoard schema may hold; the schema is compiled by protoc."""

import math
import random
import shutil

import pytest

from bridge.core.formats import protoschema
from bridge.core.formats.protojson import Printer, reference_to_json, to_json
from bridge.edge import protoc

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

EVERYTHING = """syntax = "proto3";
package every;
enum Level { LEVEL_NONE = 0; LEVEL_LOW = 1; LEVEL_HIGH = 2; }
message Inner {
  string note = 1;
  optional sint64 delta = 2;
  repeated Level levels = 3;
}
message All {
  double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
  sint32 s32 = 7; sint64 s64 = 8; fixed32 f32 = 9; fixed64 f64 = 10; sfixed32 sf32 = 11;
  sfixed64 sf64 = 12; bool b = 13; string s = 14; bytes by = 15; Level level = 16;
  optional double od = 17; optional float of = 18; optional int64 oi64 = 19;
  optional bool ob = 20; optional string os = 21; optional Level olevel = 22;
  Inner inner = 23; repeated Inner inners = 24; repeated double ds = 25;
  repeated int64 i64s = 26; repeated string ss = 27; repeated bytes bys = 28;
  repeated float fs = 29;
  oneof choice { string name = 30; Inner sub = 31; }
  int32 snake_case_name = 32;
}
"""

DOUBLES = [0.0, -0.0, 1.5, 1e7, -1e7, 12345678.0, 12345678.5, 9999999.0, 1e-4, 2.0 ** 63,
           -(2.0 ** 63), 1e300, float("nan"), float("inf"), float("-inf"), 3.0e15]
FLOATS = [0.0, 0.1, 1.5, 3e7, 16777216.0, 1e-3, float("inf"), float("nan"), 1234567.9]


def ordered(value):
    """``value`` with every object as its list of items: equal only in the same key order."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan-float"
    return (type(value).__name__, value)


def random_message(cls, rng):
    msg = cls()
    pick = rng.random
    if pick() < 0.5:
        msg.d = rng.choice(DOUBLES)
    if pick() < 0.5:
        msg.f = rng.choice(FLOATS)
    for name, bits in (("i32", 31), ("s32", 31), ("sf32", 31)):
        if pick() < 0.4:
            setattr(msg, name, rng.randint(-2 ** bits, 2 ** bits - 1))
    for name, bits in (("i64", 63), ("s64", 63), ("sf64", 63)):
        if pick() < 0.4:
            setattr(msg, name, rng.randint(-2 ** bits, 2 ** bits - 1))
    for name, bits in (("u32", 32), ("f32", 32), ("u64", 64), ("f64", 64)):
        if pick() < 0.4:
            setattr(msg, name, rng.randint(0, 2 ** bits - 1))
    if pick() < 0.5:
        msg.b = True
    if pick() < 0.5:
        msg.s = rng.choice(["", "x", "é ünïcode", "12:00"])
    if pick() < 0.3:
        msg.by = bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if pick() < 0.5:
        msg.level = rng.choice([0, 1, 2, 7])  # 7: unknown, printed as the number
    if pick() < 0.5:
        msg.od = rng.choice(DOUBLES)
    if pick() < 0.5:
        msg.of = rng.choice(FLOATS)
    if pick() < 0.5:
        msg.oi64 = rng.choice([0, -1, 2 ** 62])
    if pick() < 0.5:
        msg.ob = rng.choice([False, True])
    if pick() < 0.5:
        msg.os = rng.choice(["", "set"])
    if pick() < 0.5:
        msg.olevel = rng.choice([0, 2, 9])
    if pick() < 0.5:
        msg.inner.note = rng.choice(["", "n"])
        if pick() < 0.5:
            msg.inner.delta = rng.randint(-5, 5)
        msg.inner.levels.extend(rng.choice([0, 1, 2, 5]) for _ in range(rng.randrange(3)))
    for _ in range(rng.randrange(3)):
        msg.inners.add(note=rng.choice(["", "a"]))
    msg.ds.extend(rng.choice(DOUBLES) for _ in range(rng.randrange(4)))
    msg.i64s.extend(rng.randint(-2 ** 63, 2 ** 63 - 1) for _ in range(rng.randrange(3)))
    msg.ss.extend(rng.choice(["", "s"]) for _ in range(rng.randrange(3)))
    msg.bys.extend(b"\x00\xff" for _ in range(rng.randrange(2)))
    msg.fs.extend(rng.choice(FLOATS) for _ in range(rng.randrange(3)))
    choice = pick()
    if choice < 0.3:
        msg.name = rng.choice(["", "Bob"])
    elif choice < 0.6:
        msg.sub.note = "s"
    if pick() < 0.5:
        msg.snake_case_name = 3
    return cls.FromString(msg.SerializeToString())  # as decoded from a device


def test_the_printer_matches_message_to_dict_on_every_field_kind():
    cls = protoc.message_class(EVERYTHING, protoschema.TELEMETRY)
    rng = random.Random(15)
    printer = Printer()
    for _ in range(400):
        msg = random_message(cls, rng)
        assert ordered(printer.to_json(msg)) == ordered(reference_to_json(msg)), msg


def test_the_printer_matches_on_thingsboards_default_schemas_and_an_empty_message():
    for kind in (protoschema.TELEMETRY, protoschema.ATTRIBUTES, protoschema.RPC_RESPONSE):
        cls = protoc.message_class(protoschema.DEFAULTS[kind], kind)
        assert to_json(cls()) == reference_to_json(cls()) == {}
    cls = protoc.message_class(EVERYTHING, protoschema.TELEMETRY)
    assert ordered(to_json(cls())) == ordered(reference_to_json(cls()))
    assert to_json(cls())["snakeCaseName"] == 0 and to_json(cls())["i64"] == "0"


def test_a_schema_defining_a_google_protobuf_message_is_printed_by_message_to_dict():
    text = """syntax = "proto3";
package google.protobuf;
message Int32Value { int32 value = 1; }
message Reading { Int32Value level = 1; }
"""
    cls = protoc.message_class(text, protoschema.TELEMETRY)
    msg = cls()
    msg.level.value = 4
    printer = Printer()
    assert printer.to_json(msg) == reference_to_json(msg)
    assert cls.DESCRIPTOR in printer.reference and not printer.tables
