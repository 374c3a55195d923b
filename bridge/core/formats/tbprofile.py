"""A device profile exported from ThingsBoard (its JSON), read for its CoAP payload settings.

``device_profiles.<type>.thingsboardProfile: profile.json`` names such a file instead of
the keys. Where they are in it (ThingsBoard's ``DeviceProfile`` JSON)::

    {"name": ..., "transportType": "COAP", ...,
     "profileData": {"transportConfiguration": {
         "type": "COAP",
         "coapDeviceTypeConfiguration": {
             "coapDeviceType": "DEFAULT",
             "transportPayloadTypeConfiguration": {
                 "transportPayloadType": "PROTOBUF",
                 "deviceTelemetryProtoSchema": "...", ...}},
         "clientSettings": {...}}}}

As ThingsBoard's CoAP transport reads it: a ``DEFAULT`` transport configuration, a missing
``coapDeviceTypeConfiguration`` or a missing ``transportPayloadTypeConfiguration`` is JSON.
Refused: other transports (MQTT, LWM2M, SNMP: not a CoAP profile). A device type other than
``DEFAULT`` is a payload format's own (``EFENTO``: Efento's sensors), with no payload
settings; the keys read from a payload configuration are those its format declares
(``registry``: ``keys`` and ``flags`` of its entry). The power saving
(``clientSettings``: ``powerMode``, ``psmActivityTimer``...) is read too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, Optional

from . import DEFAULT_DEVICE_TYPE, DEFAULT_PAYLOAD_TYPE
from .registry import INSTALLED, FormatRegistry

CLIENT_KEYS = ("powerMode", "psmActivityTimer", "edrxCycle", "pagingTransmissionWindow")


class NotUsable(ValueError):
    """The document is not a device profile the bridge can take its payload settings from."""


def _object(doc: Any, key: str, path: str) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is not None and not isinstance(value, dict):
        raise NotUsable("%s.%s is not an object" % (path, key))
    return value


def payload_settings(doc: Any, formats: Optional[FormatRegistry] = None) -> Dict[str, Any]:
    """The profile's transportPayloadTypeConfiguration keys the formats read (text, or
    booleans where the key's default is one: its flags); ``{}`` for a JSON profile. Raises
    NotUsable."""
    if not isinstance(doc, dict):
        raise NotUsable("not a ThingsBoard device profile (the file holds no JSON object)")
    data = _object(doc, "profileData", "")
    transport = _object(data, "transportConfiguration", "profileData")
    if transport is None:
        raise NotUsable("not a ThingsBoard device profile (no profileData."
                        "transportConfiguration)")
    kind = transport.get("type")
    if kind == "DEFAULT":
        return {}
    if kind != "COAP":
        raise NotUsable("not a CoAP device profile (its transport type is %s)" % (kind,))
    path = "profileData.transportConfiguration"
    client = _client_settings(transport, path)
    settings = _device_settings(transport, path, formats or INSTALLED)
    if client:
        settings["clientSettings"] = client
    return settings


def _client_settings(transport: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The profile's power saving (``clientSettings``), its keys as they are (null kept:
    not given); checked with the configuration's own."""
    client = _object(transport, "clientSettings", path)
    if client is None:
        return {}
    return {key: client.get(key) for key in CLIENT_KEYS if key in client}


def _device_settings(transport: Dict[str, Any], path: str,
                     formats: FormatRegistry) -> Dict[str, Any]:
    device = _object(transport, "coapDeviceTypeConfiguration", path)
    if device is None:
        return {}
    device_type = device.get("coapDeviceType", DEFAULT_DEVICE_TYPE)
    if device_type not in formats.device_types:
        raise NotUsable("unknown coapDeviceType %r" % (device_type,))
    if device_type != DEFAULT_DEVICE_TYPE:
        return {"coapDeviceType": device_type}  # the format's own messages: no settings
    path += ".coapDeviceTypeConfiguration"
    payload = _object(device, "transportPayloadTypeConfiguration", path)
    if payload is None:
        return {}
    path += ".transportPayloadTypeConfiguration"
    settings: Dict[str, Any] = {}
    for key in ("transportPayloadType",) + formats.keys:
        value = payload.get(key)
        if value is None:
            continue
        flag = key in formats.flags
        if not isinstance(value, bool if flag else str):
            raise NotUsable("%s.%s is %s" % (path, key, "not true or false" if flag
                                             else "not text"))
        settings[key] = value
    return _own(settings, formats)


def _own(settings: Dict[str, Any], formats: FormatRegistry) -> Dict[str, Any]:
    """The keys of the profile's own format (ThingsBoard may keep another's in the
    export: they are no setting of this one); all of them when it names no format (the
    check says so)."""
    payload_type = settings.get("transportPayloadType", DEFAULT_PAYLOAD_TYPE)
    entry = formats.entry_for(SimpleNamespace(coapDeviceType=DEFAULT_DEVICE_TYPE,
                                              transportPayloadType=payload_type))
    if entry is None:
        return settings
    own = ("transportPayloadType",) + entry.keys + entry.flags
    return {key: value for key, value in settings.items() if key in own}
