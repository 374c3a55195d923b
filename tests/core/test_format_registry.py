"""The payload formats' registry (bridge.core.formats.registry): a format registered through
its entry is checked, built and used by the core with no other module edited; the installed
formats' names and checks.

The test-local format, with keys of its own declared in its entry, is configured in YAML
(or the environment), checked at start and built as the bridge does it
(``startup_checks.load_text`` with the registry, then ``formats_of``: the one call
``glue.bridge.format_of`` makes), documented by the doc generator, and serves a device's
uplinks through the core with its keys."""

from dataclasses import dataclass

import pytest

from bridge import startup_checks
from bridge.cli_config import format_keys
from bridge.core import codes, gateway
from bridge.core.actions import Device, Request, Store
from bridge.core.formats import BuildContext, FormatKeys, PayloadFormatEntry, tbprofile
from bridge.core.formats.json import JsonFormat
from bridge.core.formats.registry import INSTALLED, FormatRegistry, formats_of
from bridge.core.payloads import dumps
from bridge.core.session import GatewayCore
from bridge.settings import ConfigError, DeviceProfileConfig, describe
from bridge.settings.schema import setting
from coreconfig import handled
from tbprofiles import exported_profile

NOW = 1_700_000_000.0
PEER = ("10.0.0.1", 5683)
DEVICES = {"tokc": Device("Dev C", "csv-meter"), "tokj": Device("Dev J", "thermo")}


@dataclass(frozen=True)
class SemicolonKeys(FormatKeys):
    """A SEMICOLON profile's own keys, declared as any format's are."""
    valueSeparator: str = setting(";", "SEMICOLON: what stands between two values.")
    scale: float = setting(1.0, "SEMICOLON: each value is multiplied by it.", low=0,
                           high=1000, above=True)


class SemicolonFormat(JsonFormat):
    """A made-up format: ``key=value;key=value`` telemetry (its separator and scale its
    profile's keys), the rest as JSON."""

    name = "semicolon"

    def __init__(self, max_depth, keys):
        super().__init__(max_depth)
        self.keys = keys

    def telemetry(self, device, payload, now):
        items = payload.decode().split(self.keys.valueSeparator)
        values = {k: float(v) * self.keys.scale for k, v in (i.split("=") for i in items)}
        return super().telemetry(device, dumps(values), now)


started = []  # the profiles the start-up check saw (where, their keys)


def startup(profile, where, problems):
    """The format's start-up check, found by its "module:function" name."""
    started.append((where, profile.format_keys))
    return profile


def check(profile, where):
    """Its pure check, on its typed keys."""
    if profile.format_keys.valueSeparator == "=":
        return ["%svalueSeparator: must not be '=' (it stands between a name and its value)"
                % where]
    return []


SEMICOLON = PayloadFormatEntry(
    SemicolonFormat.name,
    lambda profile, context: SemicolonFormat(context.json.max_depth, profile.format_keys),
    payload_type="SEMICOLON", check=check, startup=__name__ + ":startup",
    settings=SemicolonKeys)
WITH_SEMICOLON = INSTALLED.with_format(SEMICOLON)


def test_a_format_registered_by_its_entry_serves_its_device_type_end_to_end():
    started.clear()
    text = "device_profiles: {csv-meter: {transportPayloadType: SEMICOLON, " \
        "valueSeparator: ',', scale: 10}}"
    config = startup_checks.load_text(text, {}, formats=WITH_SEMICOLON)
    assert started == [("device_profiles.csv-meter.", SemicolonKeys(",", 10.0))]
    format_of = formats_of(WITH_SEMICOLON, config.device_profiles,
                           BuildContext(JsonFormat(config.limits.json_max_depth)))
    core = GatewayCore(config, DEVICES.get, format_of)
    core.on_link_up(NOW)
    request = Request(7, codes.POST, ("api", "v1", "tokc", "telemetry"), b"t=2.15,h=4",
                      remote=PEER)
    [store] = [a for a in handled(core, request, NOW) if isinstance(a, Store)]
    assert (store.entry.device, store.entry.topic) == ("Dev C", gateway.TELEMETRY)
    assert b'"t":21.5' in store.entry.payload and b'"h":40.0' in store.entry.payload
    assert format_of("csv-meter").name == "semicolon" and format_of("thermo").name == "json"


def test_its_keys_come_from_the_environment_too_typed_as_the_files_are():
    env = {"DEVICE_PROFILES": '{"m": {"transportPayloadType": "SEMICOLON", "scale": "2.5"}}'}
    config = startup_checks.load_text("", env, formats=WITH_SEMICOLON)
    assert config.device_profiles["m"].format_keys == SemicolonKeys(scale=2.5)
    assert dict(config.device_profiles["m"].format_keys) == {"valueSeparator": ";",
                                                             "scale": 2.5}


def test_its_bad_keys_are_said_one_line_each_all_at_once_at_start():
    started.clear()
    text = "device_profiles: {m: {transportPayloadType: SEMICOLON, scale: 0, " \
        "valueSeparator: '=', valueSeperator: ','}, n: {transportPayloadType: SEMICOLON, " \
        "scale: lots, enableCompatibilityWithJsonPayloadFormat: true}}"
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text(text, {}, formats=WITH_SEMICOLON)
    known = "clientSettings, coapDeviceType, scale, thingsboardProfile, " \
        "transportPayloadType, valueSeparator"
    assert info.value.problems == [
        "device_profiles.m.valueSeperator: unknown key (did you mean valueSeparator? known: "
        "%s)" % known,
        "device_profiles.m.scale: must be more than 0 and at most 1000, got 0",
        "device_profiles.m.valueSeparator: must not be '=' (it stands between a name and its "
        "value)",
        "device_profiles.n.enableCompatibilityWithJsonPayloadFormat: a key of PROTOBUF "
        "profiles, not of SEMICOLON ones",
        "device_profiles.n.scale: expected a number, got 'lots'"]
    assert [where for where, _ in started] == ["device_profiles.m.", "device_profiles.n."]


def test_the_doc_generator_documents_its_keys_with_the_installed_ones():
    doc = describe.markdown(format_keys(WITH_SEMICOLON))
    assert "| `valueSeparator` | \";\" |  | SEMICOLON: what stands between two values. |" in doc
    assert "| `scale` | 1 | more than 0 and at most 1000 | SEMICOLON: each value is " \
        "multiplied by it. |" in doc
    assert "| `deviceTelemetryProtoSchemaFile` |" in doc
    assert "valueSeparator" not in describe.markdown(format_keys())


def test_the_installed_formats_do_not_know_it():
    text = "device_profiles: {csv-meter: {transportPayloadType: SEMICOLON}}"
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text(text, {})
    assert info.value.problems == ["device_profiles.csv-meter.transportPayloadType: must be "
                                   "JSON or PROTOBUF, got 'SEMICOLON'"]
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text("device_profiles: {p: {transportPayloadType: PROTOBUF, "
                                 "scale: 2}}", {}, formats=WITH_SEMICOLON)
    assert info.value.problems == [
        "device_profiles.p.scale: a key of SEMICOLON profiles, not of PROTOBUF ones"]


def test_a_protobuf_key_is_refused_elsewhere_and_its_values_checked_as_before():
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text(
            "device_profiles: {j: {deviceTelemetryProtoSchema: 'x'}, e: {coapDeviceType: "
            "EFENTO, useJsonPayloadFormatForDefaultDownlinkTopics: true}, p: "
            "{transportPayloadType: PROTOBUF, enableCompatibilityWithJsonPayloadFormat: maybe, "
            "deviceTelemetryProtoSchemaFiel: t.proto}}", {})
    assert info.value.problems == [
        "device_profiles.j.deviceTelemetryProtoSchema: a key of PROTOBUF profiles, not of "
        "JSON ones",
        "device_profiles.e.useJsonPayloadFormatForDefaultDownlinkTopics: a key of PROTOBUF "
        "profiles, not of EFENTO ones",
        "device_profiles.p.deviceTelemetryProtoSchemaFiel: unknown key (did you mean "
        "deviceTelemetryProtoSchemaFile? known: %s)" % ", ".join(sorted(
            ["thingsboardProfile", "coapDeviceType", "transportPayloadType", "clientSettings"]
            + [name for name in INSTALLED.entries[1].settings.__dataclass_fields__])),
        "device_profiles.p.enableCompatibilityWithJsonPayloadFormat: expected true or false, "
        "got 'maybe'"]


def test_a_mistyped_key_of_another_format_is_named_with_its_format():
    profile = DeviceProfileConfig(format_keys={"deviceTelemetryProtoSchemaFiel": "t.proto"})
    assert INSTALLED.check(profile, "device_profiles.j.")[1] == [
        "device_profiles.j.deviceTelemetryProtoSchemaFiel: unknown key (did you mean "
        "deviceTelemetryProtoSchemaFile (a key of PROTOBUF profiles)? known: clientSettings, "
        "coapDeviceType, thingsboardProfile, transportPayloadType)"]


def test_a_format_s_keys_are_its_settings_and_take_no_profile_s_name():
    @dataclass(frozen=True)
    class Clashing(FormatKeys):
        coapDeviceType: str = setting("", "A profile's own key.")

    for settings, message in ((Clashing, "coapDeviceType taken"),
                              (SemicolonKeys, "scale is no str key of its settings")):
        with pytest.raises(ValueError, match=message):
            INSTALLED.with_format(PayloadFormatEntry("semicolon", SEMICOLON.factory,
                                                     payload_type="SEMICOLON",
                                                     settings=settings, keys=("scale",)))


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
    protobuf = DeviceProfileConfig(transportPayloadType="PROTOBUF", format_keys={
        "deviceTelemetryProtoSchema": "syntax = \"proto3\";",
        "deviceTelemetryProtoSchemaFile": "t.proto"})
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
    # a JSON profile's export holding PROTOBUF keys: they are no setting of a JSON one
    payload["transportPayloadType"] = "JSON"
    settings = tbprofile.payload_settings(exported_profile(payload))
    settings.pop("clientSettings")
    assert settings == {"transportPayloadType": "JSON"}


def test_a_profile_no_format_takes_is_not_built():
    registry = FormatRegistry(INSTALLED.entries[:1])
    with pytest.raises(ValueError, match="device_profiles.pb: no installed payload format"):
        registry.build({"pb": DeviceProfileConfig(transportPayloadType="PROTOBUF")},
                       BuildContext(JsonFormat()))
