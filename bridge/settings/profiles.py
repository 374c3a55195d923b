"""``device_profiles:``: the payload format and power saving of each device type.

The keys are ThingsBoard's own, from a device profile's transport configuration: its
``coapDeviceType`` (DEFAULT, or EFENTO for Efento's sensors), its
transportPayloadTypeConfiguration (JSON or PROTOBUF) and its ``clientSettings`` (PSM, DRX,
eDRX and their timers, in ms as ThingsBoard exports them).
Here they are typed; what they mean is each payload format's (``bridge.core.formats``,
whose registry checks the names and the keys a format reads: ``bridge.startup_checks``
runs it, with the I/O: exported profiles and schema files read, schemas compiled by
protoc, the schema keys left holding the text).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List

from .schema import RULE, Problems, check_value, nested, setting

_SCHEMA = " Its text, or give the path of a file holding it as the key with File appended. " \
    "Left out: ThingsBoard's default."


POWER_MODES = ("PSM", "DRX", "E_DRX")
MAX_POWER_TIMER = 7 * 86400 * 1000  # ms: a week, far beyond any device's cycle
_TIMER = dict(low=0, high=MAX_POWER_TIMER, unit="ms", nullable=True)


@dataclass(frozen=True)
class ClientSettings:
    """A device type's power saving, ThingsBoard's ``clientSettings`` (0 or null: not
    given; a device's own, ``coapbridge devices set``, wins)."""
    powerMode: str = setting("", "PSM, DRX or E_DRX; empty: DRX (downlinks at any time).",
                             choices=POWER_MODES, nullable=True)
    psmActivityTimer: int = setting(0, "PSM: ms reachable after the device's last request "
                                    "(0: coap.psm_activity_timer).", **_TIMER)
    edrxCycle: int = setting(0, "eDRX: the cycle in ms; kept and unused, as in ThingsBoard's "
                             "CoAP transport.", **_TIMER)
    pagingTransmissionWindow: int = setting(0, "eDRX: ms reachable after the device's last "
                                            "request (0: coap.paging_transmission_window).",
                                            **_TIMER)


@dataclass(frozen=True)
class DeviceProfileConfig:
    """How the devices of one type encode their payloads: ThingsBoard's own keys from a
    device profile's transportPayloadTypeConfiguration. After the start-up checks the schema
    keys hold the text (read from the file, or the default)."""
    thingsboardProfile: str = setting(
        "", "Instead of the keys: a device profile exported from ThingsBoard (its JSON), whose "
        "COAP transport configuration is read.")
    coapDeviceType: str = setting(
        "DEFAULT", "DEFAULT (the /api/v1 device API) or a payload format's own device type: "
        "EFENTO (Efento's NB-IoT sensors on /efento/*, their own messages: no payload "
        "type). The payload formats installed check it at start.")
    transportPayloadType: str = setting(
        "JSON", "The payload format of a DEFAULT type: JSON or PROTOBUF (the payload formats "
        "installed check it at start).")
    deviceTelemetryProtoSchema: str = setting("", "PROTOBUF: the telemetry schema." + _SCHEMA)
    deviceTelemetryProtoSchemaFile: str = setting("", "The file of the telemetry schema.")
    deviceAttributesProtoSchema: str = setting("", "PROTOBUF: the client attributes schema."
                                               + _SCHEMA)
    deviceAttributesProtoSchemaFile: str = setting("", "The file of the attributes schema.")
    deviceRpcRequestProtoSchema: str = setting("", "PROTOBUF: the schema of server-side RPCs "
                                               "sent to the device." + _SCHEMA)
    deviceRpcRequestProtoSchemaFile: str = setting("", "The file of the RPC request schema.")
    deviceRpcResponseProtoSchema: str = setting("", "PROTOBUF: the schema of the device's RPC "
                                                "replies." + _SCHEMA)
    deviceRpcResponseProtoSchemaFile: str = setting("", "The file of the RPC response schema.")
    enableCompatibilityWithJsonPayloadFormat: bool = setting(
        False, "An undecodable PROTOBUF payload is tried as JSON.")
    useJsonPayloadFormatForDefaultDownlinkTopics: bool = setting(
        False, "Downlinks (attribute notifications and reads, RPCs) stay JSON.")
    clientSettings: ClientSettings = nested(
        ClientSettings, "Power saving: powerMode, psmActivityTimer, edrxCycle, "
        "pagingTransmissionWindow (docs/device-api.md, Power saving).")


def client_settings(raw: Dict[str, Any], where: str, problems: List[str]) -> ClientSettings:
    """An exported profile's ``clientSettings`` (its nulls: not given), checked as the
    configuration's own are; ``where`` names it in the problems."""
    values: Dict[str, Any] = {}
    for f in fields(ClientSettings):
        value = raw.get(f.name)
        if value is None:
            continue
        if type(value) is not type(f.default) or isinstance(value, bool):
            problems.append("%s%s: expected %s, got %r" % (where, f.name, "text" if isinstance(
                f.default, str) else "an integer", value))
            continue
        problem = check_value(where + f.name, f.metadata[RULE], f.default, value)
        if problem is not None:
            problems.append(problem)
            continue
        values[f.name] = value
    return ClientSettings(**values)


def given_keys(profile: DeviceProfileConfig) -> list:
    """The keys of ``profile`` set to something other than their default, but
    thingsboardProfile."""
    unset = DeviceProfileConfig()
    return [f.name for f in fields(DeviceProfileConfig)
            if f.name != "thingsboardProfile" and getattr(profile, f.name) != getattr(unset,
                                                                                  f.name)]


def check(config: Any, problems: Problems) -> None:
    for name, profile in config.device_profiles.items():
        where = "device_profiles.%s." % name
        if profile.thingsboardProfile:
            given = given_keys(profile)
            if given:
                problems.add("device_profiles", "%sthingsboardProfile: give the exported "
                             "profile or its keys (%s), not both" % (where, ", ".join(given)))
