"""Protobuf devices (a PROTOBUF device profile) through the real bridge: libcoap posts a
payload file built by the test from the same schema text, the platform checks the JSON.
ThingsBoard's fixed messages (claim, client-side RPC, provisioning) are built by the test
from their own .proto text (bridge/core/formats/fixed.py), compiled by the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from bridge.core.formats import fixed as tbfixed
from conftest import BridgeProcess
from platform_sim import PlatformSim
from protobuild import message_class
from tbprofiles import exported_profile, protobuf_payload
from test_provision_ota import ProvisioningPlatform

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


# The same message name as ThingsBoard's default telemetry schema, other fields: a profile
# exported from ThingsBoard with it sits beside the "sensor" profile (the default schemas).
SAME_NAME = """syntax = "proto3";
package telemetry;
message SensorDataReading {
  optional string label = 1;
  optional sint32 level = 2;
}
"""


# A message that contains itself: its JSON can nest as deep as the payload does.
TREE = """syntax = "proto3";
package tree;
message Node { optional int32 v = 1; Node child = 2; }
"""


def fixed(tmp_path, name):
    """One of ThingsBoard's fixed messages, built by the test from its .proto text."""
    text = (tbfixed.TRANSPORT_API_PROTO if name.startswith("transportapi.")
            else tbfixed.QUEUE_PROTO)
    return message_class(tmp_path, text, name)


@pytest.fixture(scope="module")
def platform(broker):
    """The platform, answering client-side RPCs (``client_rpc_answer``)."""
    sim = PlatformSim(broker.port)
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def pb_bridge(broker, tmp_path_factory):
    if shutil.which("protoc") is None:
        pytest.fail("protoc is missing: install protobuf-compiler (make test does)")
    workdir = str(tmp_path_factory.mktemp("pbbridge"))
    with open(os.path.join(workdir, "meter.proto"), "w") as handle:
        handle.write(CUSTOM)
    with open(os.path.join(workdir, "exported.json"), "w") as handle:
        json.dump(exported_profile(protobuf_payload(telemetry=SAME_NAME)), handle, indent=2)
    process = BridgeProcess(workdir, broker.port, device_profiles={
        "meter": {"transportPayloadType": "PROTOBUF",
                  "deviceTelemetryProtoSchemaFile": "meter.proto"},  # relative to its cwd
        "sensor": {"transportPayloadType": "PROTOBUF",  # ThingsBoard's default schemas
                   "enableCompatibilityWithJsonPayloadFormat": True},
        "exported": {"thingsboardProfile": "exported.json"},
        "tree": {"transportPayloadType": "PROTOBUF", "deviceTelemetryProtoSchema": TREE},
    })
    process.add_device("PB Meter", "pbMeter", "meter")
    process.add_device("PB Sensor", "pbSensor", "sensor")
    process.add_device("PB Exported", "pbExported", "exported")
    process.add_device("JSON Dev", "jsonDev", "thermostat")
    process.add_device("PB Tree", "pbTree", "tree")
    process.start()
    yield process
    process.stop()


def post_file(bridge, tmp_path, token, what, payload, answer=None):
    """POST ``payload`` with libcoap: the last response code, libcoap's output; the
    response's payload goes to the file ``answer`` when given."""
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    url = "%s/api/v1/%s%s" % (bridge.url, token + "/" if token else "", what)
    done = subprocess.run([LIBCOAP, "-v", "6", "-m", "post", "-t", "42", "-f", str(path)]
                          + (["-o", str(answer)] if answer else []) + [url],
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


def test_an_exported_thingsboard_profile_and_the_same_message_name_in_two_profiles(
        pb_bridge, platform, tmp_path):
    mine = message_class(tmp_path, SAME_NAME, "telemetry.SensorDataReading")
    code, out = post_file(pb_bridge, tmp_path, "pbExported", "telemetry",
                          mine(label="tank", level=-3).SerializeToString())
    assert code == "2.01", out
    assert entry_of(platform, "PB Exported", "label")["values"] == {"label": "tank", "level": -3}
    # the "sensor" profile's telemetry.SensorDataReading is still ThingsBoard's default
    default = message_class(tmp_path, DEFAULT_TELEMETRY, "telemetry.SensorDataReading")
    code, out = post_file(pb_bridge, tmp_path, "pbSensor", "telemetry",
                          default(humidity=55.5).SerializeToString())
    assert code == "2.01", out
    assert entry_of(platform, "PB Sensor", "humidity")["values"] == {"humidity": 55.5}


def test_claim_with_the_fixed_claim_device_message(pb_bridge, platform, tmp_path):
    claim = fixed(tmp_path, "transportapi.ClaimDevice")
    code, out = post_file(pb_bridge, tmp_path, "pbMeter", "claim",
                          claim(secretKey="k3y", durationMs=60000).SerializeToString())
    assert code == "2.01", out
    platform.wait_for("v1/gateway/claim", lambda p: p == {
        "PB Meter": {"secretKey": "k3y", "durationMs": 60000}})


def test_client_side_rpc_round_trip_in_fixed_messages(pb_bridge, platform, tmp_path):
    platform.client_rpc_answer = {"time": "12:00", "zone": "UTC"}
    request = fixed(tmp_path, "transportapi.RpcRequest")
    answer = tmp_path / "answer.bin"
    try:
        code, out = post_file(pb_bridge, tmp_path, "pbMeter", "rpc",
                              request(method="getTime", params='{"tz": "UTC"}')
                              .SerializeToString(), answer)
    finally:
        platform.client_rpc_answer = None
    assert code == "2.05", out
    assert "t:ACK c:2.05 i:" in out and "[ Content-Format:application/octet-stream ]" \
        in out.split("t:ACK c:2.05", 1)[1].splitlines()[0]  # the answer's: 42
    asked = [json.loads(m.payload) for m in platform.messages
             if m.topic.startswith("v1/devices/me/rpc/request/")]
    assert {"method": "deviceRpc", "params": {"device": "PB Meter", "method": "getTime",
                                              "params": {"tz": "UTC"}}} in asked
    response = fixed(tmp_path, "transport.ToServerRpcResponseMsg").FromString(
        answer.read_bytes())
    assert (response.requestId, response.error) == (0, "")
    assert json.loads(response.payload) == {"time": "12:00", "zone": "UTC"}


@pytest.fixture(scope="module")
def provisioning_platform(broker):
    sim = ProvisioningPlatform(broker.port)
    yield sim
    sim.close()


def test_provisioning_in_both_formats_answered_in_kind(pb_bridge, provisioning_platform,
                                                       tmp_path):
    answer = tmp_path / "answer.bin"
    body = {"deviceName": "Prov JSON", "provisionDeviceKey": "pkey",
            "provisionDeviceSecret": "psecret"}
    code, out = post_file(pb_bridge, tmp_path, "", "provision", json.dumps(body).encode(),
                          answer)
    assert code == "2.01", out
    assert json.loads(answer.read_bytes()) == {
        "credentialsValue": "tok-Prov_JSON", "credentialsType": "ACCESS_TOKEN",
        "status": "SUCCESS"}

    request = fixed(tmp_path, "transport.ProvisionDeviceRequestMsg")(deviceName="Prov PB")
    request.provisionDeviceCredentialsMsg.provisionDeviceKey = "pkey"
    request.provisionDeviceCredentialsMsg.provisionDeviceSecret = "psecret"
    code, out = post_file(pb_bridge, tmp_path, "", "provision", request.SerializeToString(),
                          answer)
    assert code == "2.01", out
    assert "[ Content-Format:application/octet-stream ]" \
        in out.split("t:ACK c:2.01", 1)[1].splitlines()[0]
    # the platform got the same request as JSON
    assert provisioning_platform.requests[-1] == {
        "deviceName": "Prov PB", "provisionDeviceKey": "pkey",
        "provisionDeviceSecret": "psecret", "credentialsType": "ACCESS_TOKEN"}
    response_class = fixed(tmp_path, "transport.ProvisionDeviceResponseMsg")
    response = response_class.FromString(answer.read_bytes())
    assert (response.status, response.credentialsType, response.credentialsValue) == (
        1, 0, "tok-Prov_PB")  # SUCCESS, ACCESS_TOKEN
    code, out = post_file(pb_bridge, tmp_path, "tok-Prov_PB", "telemetry", b'{"up": 1}')
    assert code == "2.01", out  # the new device's token works at once

    request.provisionDeviceCredentialsMsg.provisionDeviceSecret = "wrong"
    code, out = post_file(pb_bridge, tmp_path, "", "provision", request.SerializeToString(),
                          answer)
    assert code == "4.00", out
    # libcoap writes no file for an error; its log holds the answer's bytes in hex
    sent_back = bytes.fromhex(re.findall(r"<<([0-9a-f]+)>>", out)[-1])
    assert response_class.FromString(sent_back).status == 2  # NOT_FOUND


def test_protobuf_nested_deeper_than_the_json_limit_gets_4_00_as_json_does(
        pb_bridge, platform, tmp_path):
    """#27.10: a message 40 deep would be JSON 40 deep, past limits.json_max_depth (32, the
    shipped default) that every JSON upload is held to: 4.00; 32 deep is taken."""
    node = message_class(tmp_path, TREE, "tree.Node")

    def nested(depth):
        root = msg = node(v=0)
        for level in range(1, depth):
            msg.child.v = level
            msg = msg.child
        return root.SerializeToString()
    code, out = post_file(pb_bridge, tmp_path, "pbTree", "telemetry", nested(40))
    assert code == "4.00" and "nested deeper than 32 levels" in out, out
    code, out = post_file(pb_bridge, tmp_path, "pbTree", "telemetry", nested(32))
    assert code == "2.01", out
    entry = entry_of(platform, "PB Tree", "child")
    depth, doc = 1, entry["values"]
    while "child" in doc:
        depth, doc = depth + 1, doc["child"]
    assert (depth, doc) == (32, {"v": 31})
