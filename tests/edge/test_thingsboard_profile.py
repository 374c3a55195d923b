"""``thingsboardProfile``: a device profile exported from ThingsBoard, read for its CoAP
payload settings when the configuration is loaded (schemas compiled by the real protoc)."""

import json
import shutil

import pytest

from bridge.settings import ConfigError
from bridge.startup_checks import load_text
from bridge.core.formats import protoschema, tbprofile
from bridge.core.formats.registry import INSTALLED
from bridge.edge import protoc
from tbprofiles import exported_profile, protobuf_payload

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

METER = """syntax = "proto3";
package meter;
message Reading {
  int64 energy_wh = 1;
  optional double voltage = 2;
}
"""


def write(tmp_path, doc, name="profile.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def load(path, extra=""):
    return load_text("device_profiles: {meter: {thingsboardProfile: %s%s}}" % (path, extra), {})


def problems(path, extra=""):
    with pytest.raises(ConfigError) as info:
        load(path, extra)
    return info.value.problems


def test_a_protobuf_coap_profile_gives_its_schemas_flags_and_defaults(tmp_path):
    path = write(tmp_path, exported_profile(protobuf_payload(
        telemetry=METER, rpc_request=protoschema.DEFAULTS[protoschema.RPC_REQUEST],
        json_compatible=True, json_downlinks=True)))
    profile = load(path).device_profiles["meter"]
    assert INSTALLED.name_of(profile) == "protobuf" and profile.thingsboardProfile == str(path)
    assert profile.format_keys["deviceTelemetryProtoSchema"] == METER
    # a schema the profile leaves out (null) is ThingsBoard's default
    keys = profile.format_keys
    assert keys["deviceAttributesProtoSchema"] == protoschema.DEFAULTS[protoschema.ATTRIBUTES]
    assert keys.enableCompatibilityWithJsonPayloadFormat  # typed: the PROTOBUF keys
    assert keys.useJsonPayloadFormatForDefaultDownlinkTopics
    reading = protoc.message_class(keys.deviceTelemetryProtoSchema, protoschema.TELEMETRY)
    assert reading.DESCRIPTOR.full_name == "meter.Reading"


def test_json_default_and_bare_coap_profiles_are_json(tmp_path):
    for n, doc in enumerate([exported_profile({"transportPayloadType": "JSON"}),
                             exported_profile(transport="DEFAULT")]):
        profile = load(write(tmp_path, doc, "p%d.json" % n)).device_profiles["meter"]
        assert INSTALLED.name_of(profile) == "json"
    bare = exported_profile()
    del bare["profileData"]["transportConfiguration"]["coapDeviceTypeConfiguration"]
    assert INSTALLED.name_of(load(write(tmp_path, bare, "bare.json")).device_profiles["meter"]) \
        == "json"


def test_an_efento_profile_is_an_efento_device_type(tmp_path):
    profile = load(write(tmp_path, exported_profile(coap_device_type="EFENTO"))) \
        .device_profiles["meter"]
    assert INSTALLED.name_of(profile) == "efento"


def test_a_bad_schema_inside_the_profile_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, exported_profile(protobuf_payload(
        telemetry='syntax = "proto3";\nmessage A {\n  int32 a = 1\n}\n')))
    assert problems(path) == [
        'device_profiles.meter.deviceTelemetryProtoSchema (in %s): line 4, column 1: '
        'Expected ";".' % path]


@pytest.mark.parametrize("doc, expected", [
    ("{not json", "is not JSON"),
    ([1, 2], "not a ThingsBoard device profile (the file holds no JSON object)"),
    ({"name": "x"}, "not a ThingsBoard device profile (no profileData.transportConfiguration)"),
    (exported_profile(transport="MQTT"), "not a CoAP device profile (its transport type is MQTT)"),
    (exported_profile(transport="LWM2M"), "its transport type is LWM2M"),
    (exported_profile(coap_device_type="EFENTO_X"), "unknown coapDeviceType 'EFENTO_X'"),
    (exported_profile({"transportPayloadType": "PROTOBUF", "deviceTelemetryProtoSchema": 7}),
     "transportPayloadTypeConfiguration.deviceTelemetryProtoSchema is not text"),
    (exported_profile({"transportPayloadType": "CBOR"}), "must be JSON or PROTOBUF, got 'CBOR'"),
])
def test_a_profile_the_bridge_cannot_use_is_one_clear_config_line(tmp_path, doc, expected):
    path = write(tmp_path, doc)
    [problem] = problems(path)
    assert problem.startswith("device_profiles.meter.") and expected in problem
    if "CBOR" not in expected:
        assert problem.startswith("device_profiles.meter.thingsboardProfile: ")


def test_a_missing_file_and_keys_beside_the_profile_are_reported(tmp_path):
    [missing] = problems(tmp_path / "nope.json")
    assert missing.startswith("device_profiles.meter.thingsboardProfile: cannot read %s"
                              % (tmp_path / "nope.json"))
    path = write(tmp_path, exported_profile(protobuf_payload()))
    assert problems(path, ", transportPayloadType: PROTOBUF") == [
        "device_profiles.meter.thingsboardProfile: give the exported profile or its keys "
        "(transportPayloadType), not both"]


def test_payload_settings_reads_only_the_payload_keys_and_the_client_settings():
    settings = tbprofile.payload_settings(exported_profile(protobuf_payload(telemetry=METER)))
    assert settings == {"transportPayloadType": "PROTOBUF", "deviceTelemetryProtoSchema": METER,
                        "enableCompatibilityWithJsonPayloadFormat": False,
                        "useJsonPayloadFormatForDefaultDownlinkTopics": False,
                        "clientSettings": {"powerMode": "DRX", "psmActivityTimer": None,
                                           "edrxCycle": None,
                                           "pagingTransmissionWindow": None}}


def test_the_profiles_power_saving_is_read_with_its_nulls(tmp_path):
    doc = exported_profile()
    doc["profileData"]["transportConfiguration"]["clientSettings"] = {
        "powerMode": "PSM", "psmActivityTimer": 30000, "edrxCycle": None,
        "pagingTransmissionWindow": None}
    client = load(write(tmp_path, doc)).device_profiles["meter"].clientSettings
    assert (client.powerMode, client.psmActivityTimer, client.pagingTransmissionWindow) == (
        "PSM", 30000, 0)
    doc["profileData"]["transportConfiguration"]["clientSettings"] = {
        "powerMode": "SLEEPY", "psmActivityTimer": -5}
    path = write(tmp_path, doc, "bad.json")
    assert problems(path) == [
        "device_profiles.meter.clientSettings.powerMode: must be one of PSM, DRX, E_DRX, got "
        "'SLEEPY' (in %s)" % path,
        "device_profiles.meter.clientSettings.psmActivityTimer: must be 0 to 604800000 ms, "
        "got -5 (in %s)" % path]
