"""Schemas compiled by the real protoc, and their problems as configuration errors."""

import sys

import pytest

from bridge import settings as config_module
from bridge.settings import ConfigError
from bridge.startup_checks import load_text
from bridge.core.formats import protoschema
from bridge.core.formats.registry import INSTALLED
from bridge.edge import protoc

pytestmark = pytest.mark.skipif(protoc.protoc_command() is None,
                                reason="no protoc: neither grpcio-tools nor the system's")


def problems(text):
    with pytest.raises(ConfigError) as info:
        load_text(text, {})
    return info.value.problems


def test_a_schema_that_does_not_compile_is_reported_with_profile_schema_line_and_column():
    text = """
device_profiles:
  sensor:
    transportPayloadType: PROTOBUF
    deviceTelemetryProtoSchema: |
      syntax = "proto3";
      message A {
        int32 a = 1
      }
coap: {bind_port: 0}
"""
    found = problems(text)
    assert 'device_profiles.sensor.deviceTelemetryProtoSchema: line 4, column 1: Expected ";".' \
        in found
    assert "coap.bind_port: port 0 is out of range 1-65535" in found  # with the others


def test_a_rule_broken_in_a_schema_file_names_the_file_and_the_position(tmp_path):
    path = tmp_path / "attrs.proto"
    path.write_text('syntax = "proto3";\nmessage A {\n  int32 a = 1;\n  reserved 7;\n}\n')
    found = problems("device_profiles: {meter: {transportPayloadType: PROTOBUF, "
                     "deviceAttributesProtoSchemaFile: %s}}" % path)
    assert found == ["device_profiles.meter.deviceAttributesProtoSchema (%s): line 4, "
                     "column 3: message A: reserved is not supported" % path]


def test_a_missing_schema_file_and_a_wrong_payload_type_are_reported():
    found = problems("device_profiles: {a: {transportPayloadType: CBOR}, "
                     "b: {transportPayloadType: PROTOBUF, "
                     "deviceTelemetryProtoSchemaFile: /nonexistent.proto}}")
    assert "device_profiles.a.transportPayloadType: must be JSON or PROTOBUF, got 'CBOR'" \
        in found
    assert any(p.startswith("device_profiles.b.deviceTelemetryProtoSchemaFile: cannot read "
                            "/nonexistent.proto") for p in found)


def test_a_protobuf_profile_gets_thingsboards_default_schemas():
    config = load_text("device_profiles: {sensor: {transportPayloadType: PROTOBUF}}", {})
    profile = config.device_profiles["sensor"]
    for kind in protoschema.KINDS:
        assert profile.format_keys[kind] == protoschema.DEFAULTS[kind]
        protoc.message_class(profile.format_keys[kind], kind)  # compiles and passes the rules
    assert protoc.message_class(profile.format_keys["deviceTelemetryProtoSchema"],
                                protoschema.TELEMETRY) \
        .DESCRIPTOR.full_name == "telemetry.SensorDataReading"


def test_two_profiles_with_the_same_message_name_each_keep_their_own():
    text = """
device_profiles:
  a:
    transportPayloadType: PROTOBUF
    deviceTelemetryProtoSchema: |
      syntax = "proto3";
      package telemetry;
      message SensorDataReading { optional double temperature = 1; }
  b:
    transportPayloadType: PROTOBUF
    deviceTelemetryProtoSchema: |
      syntax = "proto3";
      package telemetry;
      message SensorDataReading { optional string label = 1; }
"""
    profiles = load_text(text, {}).device_profiles
    first, second = (protoc.message_class(profiles[name].format_keys[protoschema.TELEMETRY],
                                          protoschema.TELEMETRY) for name in "ab")
    assert [f.name for f in first.DESCRIPTOR.fields] == ["temperature"]
    assert [f.name for f in second.DESCRIPTOR.fields] == ["label"]


def test_protoc_missing_is_a_config_error_saying_both_ways_to_get_one(monkeypatch):
    monkeypatch.setattr(protoc, "bundled_protoc", lambda: None)
    monkeypatch.setattr(protoc, "system_protoc", lambda: None)
    protoc.compile_schema.cache_clear()
    found = problems("device_profiles: {sensor: {transportPayloadType: PROTOBUF}}")
    assert found == ["device_profiles.sensor: transportPayloadType PROTOBUF: " + protoc.INSTALL_HINT]
    assert "pip install grpcio-tools" in protoc.INSTALL_HINT
    assert "apt-get install protobuf-compiler" in protoc.INSTALL_HINT


def test_json_profiles_need_no_protoc(monkeypatch):
    monkeypatch.setattr(protoc, "bundled_protoc", lambda: None)
    monkeypatch.setattr(protoc, "system_protoc", lambda: None)
    config = load_text("device_profiles: {plain: {}}", {})
    assert INSTALLED.name_of(config.device_profiles["plain"]) == "json"
    assert config_module.Config().device_profiles == {}


def test_efento_profiles_are_checked_and_need_protoc(monkeypatch):
    config = load_text("device_profiles: {sensor: {coapDeviceType: EFENTO}}", {})
    assert INSTALLED.name_of(config.device_profiles["sensor"]) == "efento"
    assert problems("device_profiles: {a: {coapDeviceType: LWM2M}, "
                    "b: {coapDeviceType: EFENTO, transportPayloadType: PROTOBUF}}") == [
        "device_profiles.a.coapDeviceType: must be DEFAULT or EFENTO, got 'LWM2M'",
        "device_profiles.b.transportPayloadType: an EFENTO profile has none (its sensors "
        "send Efento's own messages)"]
    monkeypatch.setattr(protoc, "bundled_protoc", lambda: None)
    monkeypatch.setattr(protoc, "system_protoc", lambda: None)
    protoc.compile_schema.cache_clear()
    protoc.efento_messages.cache_clear()
    try:
        assert problems("device_profiles: {sensor: {coapDeviceType: EFENTO}}") == [
            "device_profiles.sensor: coapDeviceType EFENTO: " + protoc.INSTALL_HINT]
    finally:
        monkeypatch.undo()
        protoc.compile_schema.cache_clear()
        protoc.efento_messages.cache_clear()


@pytest.mark.skipif(protoc.bundled_protoc() is None,
                    reason="grpcio-tools is not installed (no PyPy wheel: the system protoc "
                           "serves there)")
def test_grpcio_tools_protoc_comes_first():
    assert protoc.protoc_command() == [sys.executable, "-m", "grpc_tools.protoc"]


def _each_protoc():
    found = [("grpcio-tools", protoc.bundled_protoc()), ("system", protoc.system_protoc())]
    return [pytest.param(command, id=name, marks=pytest.mark.skipif(
        command is None, reason="no %s protoc here" % name)) for name, command in found]


@pytest.mark.parametrize("command", _each_protoc())
def test_each_protoc_compiles_a_schema_and_reports_positions(command, monkeypatch):
    monkeypatch.setattr(protoc, "protoc_command", lambda: command)
    protoc.compile_schema.cache_clear()
    try:
        good = protoc.message_class(
            'syntax = "proto3";\npackage telemetry;\n'
            "message Reading { optional double t = 1; repeated int64 n = 2; }\n",
            protoschema.TELEMETRY)
        assert [f.name for f in good.DESCRIPTOR.fields] == ["t", "n"]
        with pytest.raises(protoc.SchemaError) as info:
            protoc.compile_schema('syntax = "proto3";\nmessage A {\n  int32 a = 1\n}\n',
                                  protoschema.TELEMETRY)
        assert info.value.problems == [(4, 1, 'Expected ";".')]
    finally:
        protoc.compile_schema.cache_clear()  # the next tests compile with the usual protoc
