"""Protobuf devices (a PROTOBUF device profile) through the real bridge: libcoap posts a
payload file built by the test from the same schema text, the platform checks the JSON."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from conftest import BridgeProcess

pytestmark = pytest.mark.integration

LIBCOAP = shutil.which("coap-client-notls")

CUSTOM = """syntax = "proto3";
package meter;
enum Phase { PHASE_UNKNOWN = 0; PHASE_L1 = 1; PHASE_L2 = 2; }
message Reading {
  int64 energy_wh = 1;
  optional double voltage = 2;
  Phase phase = 3;
  repeated int32 samples = 4;
  Meta meta = 5;
  message Meta { string serial = 1; optional uint64 uptime_s = 2; }
}
"""

DEFAULT_TELEMETRY = """syntax ="proto3";
package telemetry;
message SensorDataReading {
  optional double temperature = 1;
  optional double humidity = 2;
  InnerObject innerObject = 3;
  message InnerObject {
    optional string key1 = 1; optional bool key2 = 2; optional double key3 = 3;
    optional int32 key4 = 4; optional string key5 = 5;
  }
}
"""

DEFAULT_ATTRIBUTES = """syntax ="proto3";
package attributes;
message SensorConfiguration { optional string firmwareVersion = 1; optional string serialNumber = 2; }
"""


def message_class(tmp_path, text, name):
    """The test's own build of the schema: protoc, a pool, the message's class."""
    source = tmp_path / "t.proto"
    source.write_text(text)
    out = tmp_path / "t.pb"
    subprocess.run(["protoc", "--descriptor_set_out=%s" % out, "-I", str(tmp_path),
                    str(source)], check=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0])
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


@pytest.fixture(scope="module")
def pb_bridge(broker, tmp_path_factory):
    if shutil.which("protoc") is None:
        pytest.fail("protoc is missing: install protobuf-compiler (make test does)")
    workdir = str(tmp_path_factory.mktemp("pbbridge"))
    with open(os.path.join(workdir, "meter.proto"), "w") as handle:
        handle.write(CUSTOM)
    process = BridgeProcess(workdir, broker.port, device_profiles={
        "meter": {"transportPayloadType": "PROTOBUF",
                  "deviceTelemetryProtoSchemaFile": "meter.proto"},  # relative to its cwd
        "sensor": {"transportPayloadType": "PROTOBUF",  # ThingsBoard's default schemas
                   "enableCompatibilityWithJsonPayloadFormat": True},
    })
    process.add_device("PB Meter", "pbMeter", "meter")
    process.add_device("PB Sensor", "pbSensor", "sensor")
    process.add_device("JSON Dev", "jsonDev", "thermostat")
    process.start()
    yield process
    process.stop()


def post_file(bridge, tmp_path, token, what, payload):
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    done = subprocess.run([LIBCOAP, "-v", "6", "-m", "post", "-t", "42", "-f", str(path),
                           "%s/api/v1/%s/%s" % (bridge.url, token, what)],
                          capture_output=True, timeout=30)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)
    return (codes[-1] if codes else None), out


def entry_of(platform, device, key):
    payload = platform.wait_for(
        "v1/gateway/telemetry",
        lambda p: any(key in e["values"] for e in p.get(device, [])))
    return next(e for e in payload[device] if key in e["values"])


def test_custom_schema_telemetry_reaches_the_platform_as_thingsboards_json(
        pb_bridge, platform, tmp_path):
    reading = message_class(tmp_path, CUSTOM, "meter.Reading")
    msg = reading(energy_wh=12345678901, phase=2, samples=[3, -4], meta={"serial": "M-1"})
    code, out = post_file(pb_bridge, tmp_path, "pbMeter", "telemetry", msg.SerializeToString())
    assert code == "2.01", out
    entry = entry_of(platform, "PB Meter", "energyWh")
    assert entry["values"] == {"energyWh": "12345678901", "phase": "PHASE_L2",
                               "samples": [3, -4], "meta": {"serial": "M-1"}}


def test_default_schemas_telemetry_and_attributes(pb_bridge, platform, tmp_path):
    reading = message_class(tmp_path, DEFAULT_TELEMETRY, "telemetry.SensorDataReading")
    msg = reading(temperature=42.0, innerObject={"key4": 7})
    code, out = post_file(pb_bridge, tmp_path, "pbSensor", "telemetry", msg.SerializeToString())
    assert code == "2.01", out
    assert entry_of(platform, "PB Sensor", "temperature")["values"] == {
        "temperature": 42.0, "innerObject": {"key4": 7}}
    config = message_class(tmp_path, DEFAULT_ATTRIBUTES, "attributes.SensorConfiguration")
    code, out = post_file(pb_bridge, tmp_path, "pbSensor", "attributes",
                          config(firmwareVersion="2.0.1").SerializeToString())
    assert code == "2.01", out
    platform.wait_for("v1/gateway/attributes",
                      lambda p: p == {"PB Sensor": {"firmwareVersion": "2.0.1"}})


def test_json_fallback_with_compatibility_and_a_bad_payload_without(pb_bridge, platform,
                                                                    tmp_path):
    code, out = post_file(pb_bridge, tmp_path, "pbSensor", "telemetry", b'{"fallback": 5}')
    assert code == "2.01", out
    assert entry_of(platform, "PB Sensor", "fallback")["values"] == {"fallback": 5}
    code, out = post_file(pb_bridge, tmp_path, "pbMeter", "telemetry", b'{"fallback": 6}')
    assert code == "4.00", out
    assert "does not decode as meter.Reading" in out


def test_a_json_device_beside_them_still_speaks_json(pb_bridge, platform, tmp_path):
    code, out = post_file(pb_bridge, tmp_path, "jsonDev", "telemetry", b'{"plain": 1}')
    assert code == "2.01", out
    assert entry_of(platform, "JSON Dev", "plain")["values"] == {"plain": 1}


def test_a_bad_schema_stops_the_bridge_with_line_and_column(broker, tmp_path):
    process = BridgeProcess(str(tmp_path), broker.port, device_profiles={
        "meter": {"transportPayloadType": "PROTOBUF",
                  "deviceTelemetryProtoSchema": 'syntax = "proto3";\nmessage A {\n  int32 a = 1\n}\n'}})
    try:
        with pytest.raises(AssertionError):
            process.start(wait_mqtt=False)
        assert 'device_profiles.meter.deviceTelemetryProtoSchema: line 4, column 1: Expected ";"' \
            in process.read_log()
    finally:
        process.stop()
