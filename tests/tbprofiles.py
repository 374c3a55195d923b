"""Device profiles as ThingsBoard exports them (the JSON of its DeviceProfile entity), for
tests of ``thingsboardProfile``. The structure and field names follow ThingsBoard's
DeviceProfile, DeviceProfileData, CoapDeviceProfileTransportConfiguration,
DefaultCoapDeviceTypeConfiguration and ProtoTransportPayloadConfiguration."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

_PROFILE: Dict[str, Any] = {
    "id": {"entityType": "DEVICE_PROFILE", "id": "5b0f3e60-8f4c-11ee-9b1a-1f2e3d4c5b6a"},
    "createdTime": 1701388800000,
    "tenantId": {"entityType": "TENANT", "id": "1c2d3e40-8f4c-11ee-9b1a-1f2e3d4c5b6a"},
    "name": "NB-IoT meter",
    "description": "Meters on NB-IoT, protobuf over CoAP",
    "image": None,
    "type": "DEFAULT",
    "transportType": "COAP",
    "provisionType": "DISABLED",
    "defaultRuleChainId": None,
    "defaultDashboardId": None,
    "defaultQueueName": None,
    "profileData": {
        "configuration": {"type": "DEFAULT"},
        "transportConfiguration": {
            "type": "COAP",
            "coapDeviceTypeConfiguration": {
                "coapDeviceType": "DEFAULT",
                "transportPayloadTypeConfiguration": {"transportPayloadType": "JSON"},
            },
            "clientSettings": {"powerMode": "DRX", "psmActivityTimer": None,
                               "edrxCycle": None, "pagingTransmissionWindow": None},
        },
        "provisionConfiguration": {"type": "DISABLED", "provisionDeviceSecret": None},
        "alarms": None,
    },
    "provisionDeviceKey": None,
    "firmwareId": None,
    "softwareId": None,
    "defaultEdgeRuleChainId": None,
    "externalId": None,
    "default": False,
}


def exported_profile(payload: Optional[Dict[str, Any]] = None, transport: str = "COAP",
                     coap_device_type: str = "DEFAULT") -> Dict[str, Any]:
    """A profile's JSON with ``payload`` as its transportPayloadTypeConfiguration."""
    doc = copy.deepcopy(_PROFILE)
    doc["transportType"] = transport
    config = doc["profileData"]["transportConfiguration"]
    config["type"] = transport
    if transport != "COAP":
        config.pop("coapDeviceTypeConfiguration")
        config.pop("clientSettings")
        return doc
    device = config["coapDeviceTypeConfiguration"]
    device["coapDeviceType"] = coap_device_type
    if coap_device_type == "EFENTO":
        device.pop("transportPayloadTypeConfiguration")
    elif payload is not None:
        device["transportPayloadTypeConfiguration"] = payload
    return doc


def protobuf_payload(telemetry: str = "", attributes: str = "", rpc_request: str = "",
                     rpc_response: str = "", json_compatible: bool = False,
                     json_downlinks: bool = False) -> Dict[str, Any]:
    """A PROTOBUF transportPayloadTypeConfiguration as the platform stores it."""
    return {"transportPayloadType": "PROTOBUF",
            "deviceTelemetryProtoSchema": telemetry or None,
            "deviceAttributesProtoSchema": attributes or None,
            "deviceRpcRequestProtoSchema": rpc_request or None,
            "deviceRpcResponseProtoSchema": rpc_response or None,
            "enableCompatibilityWithJsonPayloadFormat": json_compatible,
            "useJsonPayloadFormatForDefaultDownlinkTopics": json_downlinks}
