"""``device_profiles:``: the payload format of each device type (JSON or PROTOBUF).

The keys are ThingsBoard's own, from a device profile's transportPayloadTypeConfiguration.
Reading the schema files, an exported profile and compiling the schemas with protoc is
I/O: ``bridge.startup_checks`` does it, and leaves the schema keys holding the text.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .schema import Problems, setting

# the schema keys (each has a ...File key beside it)
SCHEMA_KINDS = ("deviceTelemetryProtoSchema", "deviceAttributesProtoSchema",
                "deviceRpcRequestProtoSchema", "deviceRpcResponseProtoSchema")
_SCHEMA = " Its text, or give the path of a file holding it as the key with File appended. " \
    "Left out: ThingsBoard's default."


@dataclass(frozen=True)
class DeviceProfileConfig:
    """How the devices of one type encode their payloads: ThingsBoard's own keys from a
    device profile's transportPayloadTypeConfiguration. After the start-up checks the schema
    keys hold the text (read from the file, or the default)."""
    thingsboardProfile: str = setting(
        "", "Instead of the keys: a device profile exported from ThingsBoard (its JSON), whose "
        "COAP transport configuration is read.")
    transportPayloadType: str = setting("JSON", "JSON or PROTOBUF.",
                                        choices=("JSON", "PROTOBUF"))
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

    @property
    def protobuf(self) -> bool:
        return self.transportPayloadType == "PROTOBUF"


def given_keys(profile: DeviceProfileConfig) -> list:
    """The keys of ``profile`` set to something other than their default, but
    thingsboardProfile."""
    return [f.name for f in fields(DeviceProfileConfig)
            if f.name != "thingsboardProfile" and getattr(profile, f.name) != f.default]


def check(config: Any, problems: Problems) -> None:
    for name, profile in config.device_profiles.items():
        where = "device_profiles.%s." % name
        if profile.thingsboardProfile:
            given = given_keys(profile)
            if given:
                problems.add("device_profiles", "%sthingsboardProfile: give the exported "
                             "profile or its keys (%s), not both" % (where, ", ".join(given)))
            continue
        for kind in SCHEMA_KINDS:
            if getattr(profile, kind) and getattr(profile, kind + "File"):
                problems.add("device_profiles", "%s: give %s or %sFile, not both"
                             % (where, kind, kind))
