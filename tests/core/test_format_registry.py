"""The payload formats' registry (bridge.core.formats.registry): a format registered through
its entry is checked, built and used by the core with no other module edited; the installed
formats' names and checks.

The test-local format is configured, checked at start and built as the bridge does it
(``startup_checks.load_text`` with the registry, then ``formats_of``: the one call
``glue.bridge.format_of`` makes), then serves a device's uplinks through the core."""

import pytest

from bridge import startup_checks
from bridge.core import codes, gateway
from bridge.core.actions import Device, Request, Store
from bridge.core.formats import BuildContext, PayloadFormatEntry, tbprofile
from bridge.core.formats.json import JsonFormat
from bridge.core.formats.registry import INSTALLED, FormatRegistry, formats_of
from bridge.core.payloads import dumps
from bridge.core.session import GatewayCore
from bridge.settings import ConfigError, DeviceProfileConfig
from coreconfig import handled
from tbprofiles import exported_profile

NOW = 1_700_000_000.0
PEER = ("10.0.0.1", 5683)
DEVICES = {"tokc": Device("Dev C", "csv-meter"), "tokj": Device("Dev J", "thermo")}


class SemicolonFormat(JsonFormat):
    """A made-up format: ``key=value;key=value`` telemetry, the rest as JSON."""

    name = "semicolon"

    def telemetry(self, device, payload, now):
        values = dict(item.split("=") for item in payload.decode().split(";"))
        return super().telemetry(device, dumps({k: float(v) for k, v in values.items()}), now)


started = []  # the profiles the start-up check saw (where, compatibility flag)


def startup(profile, where, problems):
    """The format's start-up check, found by its "module:function" name."""
    started.append((where, profile.enableCompatibilityWithJsonPayloadFormat))
    return profile


def check(profile, where):
    if profile.deviceTelemetryProtoSchema:
        return ["%sdeviceTelemetryProtoSchema: a SEMICOLON profile has no schema" % where]
    return []


SEMICOLON = PayloadFormatEntry(
    SemicolonFormat.name, lambda profile, context: SemicolonFormat(context.json.max_depth),
    payload_type="SEMICOLON", check=check, startup=__name__ + ":startup")
WITH_SEMICOLON = INSTALLED.with_format(SEMICOLON)


def test_a_format_registered_by_its_entry_serves_its_device_type_end_to_end():
    started.clear()
    text = "device_profiles: {csv-meter: {transportPayloadType: SEMICOLON}}"
    config = startup_checks.load_text(text, {}, formats=WITH_SEMICOLON)
    assert started == [("device_profiles.csv-meter.", False)]
    format_of = formats_of(WITH_SEMICOLON, config.device_profiles,
                           BuildContext(JsonFormat(config.limits.json_max_depth)))
    core = GatewayCore(config, DEVICES.get, format_of)
    core.on_link_up(NOW)
    request = Request(7, codes.POST, ("api", "v1", "tokc", "telemetry"), b"t=21.5;h=40",
                      remote=PEER)
    [store] = [a for a in handled(core, request, NOW) if isinstance(a, Store)]
    assert (store.entry.device, store.entry.topic) == ("Dev C", gateway.TELEMETRY)
    assert b'"t":21.5' in store.entry.payload and b'"h":40.0' in store.entry.payload
    assert format_of("csv-meter").name == "semicolon" and format_of("thermo").name == "json"


def test_the_installed_formats_do_not_know_it_and_its_check_runs_at_start():
    text = "device_profiles: {csv-meter: {transportPayloadType: SEMICOLON}}"
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text(text, {})
    assert info.value.problems == ["device_profiles.csv-meter.transportPayloadType: must be "
                                   "JSON or PROTOBUF, got 'SEMICOLON'"]
    started.clear()
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text("device_profiles: {m: {transportPayloadType: SEMICOLON, "
                                 "deviceTelemetryProtoSchema: 'x'}}", {}, formats=WITH_SEMICOLON)
    assert info.value.problems == [
        "device_profiles.m.deviceTelemetryProtoSchema: a SEMICOLON profile has no schema"]
    assert started == [("device_profiles.m.", False)]  # every problem at once: it ran too


def test_the_names_each_format_takes():
    cases = [({}, "json"), ({"transportPayloadType": "PROTOBUF"}, "protobuf"),
             ({"coapDeviceType": "EFENTO"}, "efento"),
             ({"transportPayloadType": "SEMICOLON"}, "semicolon"),
             ({"transportPayloadType": "CBOR"}, None), ({"coapDeviceType": "LWM2M"}, None)]
    assert [WITH_SEMICOLON.name_of(DeviceProfileConfig(**keys)) for keys, _ in cases] == \
        [name for _, name in cases]
    assert WITH_SEMICOLON.payload_types == ("JSON", "PROTOBUF", "SEMICOLON")
    assert WITH_SEMICOLON.device_types == ("DEFAULT", "EFENTO")
    assert INSTALLED.check(DeviceProfileConfig(transportPayloadType="CBOR"), "p.")[1] == [
        "p.transportPayloadType: must be JSON or PROTOBUF, got 'CBOR'"]
    assert WITH_SEMICOLON.check(DeviceProfileConfig(transportPayloadType="CBOR"), "p.")[1] == [
        "p.transportPayloadType: must be one of JSON, PROTOBUF, SEMICOLON, got 'CBOR'"]


def test_two_formats_cannot_take_the_same_names_and_a_startup_names_its_module():
    with pytest.raises(ValueError, match="json and semicolon both take coapDeviceType "
                                         "DEFAULT, transportPayloadType JSON"):
        INSTALLED.with_format(PayloadFormatEntry("semicolon", SEMICOLON.factory,
                                                 payload_type="JSON"))
    with pytest.raises(ValueError, match="startup 'startup' is not \"module:function\""):
        INSTALLED.with_format(PayloadFormatEntry("semicolon", SEMICOLON.factory,
                                                 payload_type="SEMICOLON", startup="startup"))


def test_the_installed_formats_own_checks():
    protobuf = DeviceProfileConfig(transportPayloadType="PROTOBUF",
                                   deviceTelemetryProtoSchema="syntax = \"proto3\";",
                                   deviceTelemetryProtoSchemaFile="t.proto")
    entry, problems = INSTALLED.check(protobuf, "device_profiles.p.")
    assert entry.name == "protobuf" and problems == [
        "device_profiles.p.: give deviceTelemetryProtoSchema or deviceTelemetryProtoSchemaFile, "
        "not both"]
    efento = DeviceProfileConfig(coapDeviceType="EFENTO", transportPayloadType="PROTOBUF")
    assert INSTALLED.check(efento, "device_profiles.e.")[1] == [
        "device_profiles.e.transportPayloadType: an EFENTO profile has none (its sensors send "
        "Efento's own messages)"]
    assert INSTALLED.check(DeviceProfileConfig(), "device_profiles.j.") == (
        INSTALLED.entries[0], [])


def test_a_device_type_of_its_own_is_read_from_an_exported_profile():
    own = INSTALLED.with_format(PayloadFormatEntry("sensorco", SEMICOLON.factory,
                                                   device_type="SENSORCO"))
    doc = exported_profile(coap_device_type="SENSORCO")
    assert tbprofile.payload_settings(doc, own)["coapDeviceType"] == "SENSORCO"
    with pytest.raises(tbprofile.NotUsable, match="unknown coapDeviceType 'SENSORCO'"):
        tbprofile.payload_settings(doc)
    # the keys read from a payload configuration are those some format declares
    payload = {"transportPayloadType": "PROTOBUF", "deviceTelemetryProtoSchema": "x",
               "deviceTelemetryProtoSchemaFile": "/etc/passwd",
               "enableCompatibilityWithJsonPayloadFormat": True}
    settings = tbprofile.payload_settings(exported_profile(payload))
    settings.pop("clientSettings")
    assert settings == {"transportPayloadType": "PROTOBUF", "deviceTelemetryProtoSchema": "x",
                        "enableCompatibilityWithJsonPayloadFormat": True}


def test_a_profile_no_format_takes_is_not_built():
    registry = FormatRegistry(INSTALLED.entries[:1])
    with pytest.raises(ValueError, match="device_profiles.pb: no installed payload format"):
        registry.build({"pb": DeviceProfileConfig(transportPayloadType="PROTOBUF")},
                       BuildContext(JsonFormat()))
