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
Refused: other transports (MQTT, LWM2M, SNMP: not a CoAP profile). An ``EFENTO`` device type
is Efento's sensors (``coapDeviceType``; they have no payload settings). The power saving
(``clientSettings``: ``powerMode``, ``psmActivityTimer``...) is read too.
"""

from __future__ import annotations

from typing import Any, Dict

from . import protoschema

TEXT_KEYS = ("transportPayloadType",) + protoschema.KINDS
CLIENT_KEYS = ("powerMode", "psmActivityTimer", "edrxCycle", "pagingTransmissionWindow")
FLAG_KEYS = ("enableCompatibilityWithJsonPayloadFormat",
             "useJsonPayloadFormatForDefaultDownlinkTopics")


class NotUsable(ValueError):
    """The document is not a device profile the bridge can take its payload settings from."""


def _object(doc: Any, key: str, path: str) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is not None and not isinstance(value, dict):
        raise NotUsable("%s.%s is not an object" % (path, key))
    return value


def payload_settings(doc: Any) -> Dict[str, Any]:
    """The profile's transportPayloadTypeConfiguration keys the bridge reads (schemas as
    text, flags as booleans); ``{}`` for a JSON profile. Raises NotUsable."""
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
    settings = _device_settings(transport, path)
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


def _device_settings(transport: Dict[str, Any], path: str) -> Dict[str, Any]:
    device = _object(transport, "coapDeviceTypeConfiguration", path)
    if device is None:
        return {}
    device_type = device.get("coapDeviceType", "DEFAULT")
    if device_type == "EFENTO":
        return {"coapDeviceType": "EFENTO"}  # Efento's own messages: no payload settings
    if device_type != "DEFAULT":
        raise NotUsable("unknown coapDeviceType %r" % (device_type,))
    path += ".coapDeviceTypeConfiguration"
    payload = _object(device, "transportPayloadTypeConfiguration", path)
    if payload is None:
        return {}
    path += ".transportPayloadTypeConfiguration"
    settings: Dict[str, Any] = {}
    for key in TEXT_KEYS:
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise NotUsable("%s.%s is not text" % (path, key))
        settings[key] = value
    for key in FLAG_KEYS:
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise NotUsable("%s.%s is not true or false" % (path, key))
        settings[key] = value
    return settings
