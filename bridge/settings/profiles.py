"""``device_profiles:``: the payload format and power saving of each device type.

The keys are ThingsBoard's own, from a device profile's transport configuration: its
``coapDeviceType`` (DEFAULT, or EFENTO for Efento's sensors), its
transportPayloadTypeConfiguration (JSON or PROTOBUF) and its ``clientSettings`` (PSM, DRX,
eDRX and their timers, in ms as ThingsBoard exports them).
Here the common ones are typed (the names of the format, the power saving); the keys of a
payload format are the format's own, declared in its module (``bridge.core.formats``):
read here as given, into ``format_keys``, and typed and checked by the format's registry
at start (``bridge.startup_checks``, with the I/O: exported profiles and schema files
read, schemas compiled by protoc, the schema keys left holding the text).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Dict, List, Mapping

from .schema import RULE, Problems, check_value, extra, nested, setting

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
    device profile's transportPayloadTypeConfiguration. Beside the keys every profile has,
    a profile takes those of its payload format (declared by the format: PROTOBUF's schemas
    and flags), checked at start; a key of another format, or of none, is refused. After
    the start-up checks the schema keys hold the text (read from the file, or the
    default)."""
    # the format's keys are read as given into format_keys (bridge.core.formats types them)
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
    format_keys: Mapping[str, Any] = extra(
        "Every other key: the payload format's own (below, each format's), typed and checked "
        "by the format at start.")
    clientSettings: ClientSettings = nested(
        ClientSettings, "Power saving: powerMode, psmActivityTimer, edrxCycle, "
        "pagingTransmissionWindow (docs/device-api.md, Power saving).")

    def __post_init__(self) -> None:
        if isinstance(self.format_keys, dict):  # given as a dict: read-only from here on
            object.__setattr__(self, "format_keys", MappingProxyType(dict(self.format_keys)))


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


COMMON_KEYS = tuple(f.name for f in fields(DeviceProfileConfig) if f.name != "format_keys")


def given_keys(profile: DeviceProfileConfig) -> list:
    """The keys of ``profile`` set to something other than their default, but
    thingsboardProfile, then its format's keys given."""
    unset = DeviceProfileConfig()
    return [name for name in COMMON_KEYS if name != "thingsboardProfile" and
            getattr(profile, name) != getattr(unset, name)] + list(profile.format_keys)


def check(config: Any, problems: Problems) -> None:
    for name, profile in config.device_profiles.items():
        where = "device_profiles.%s." % name
        if profile.thingsboardProfile:
            given = given_keys(profile)
            if given:
                problems.add("device_profiles", "%sthingsboardProfile: give the exported "
                             "profile or its keys (%s), not both" % (where, ", ".join(given)))
