"""Provisioning requests as ThingsBoard reads them: JSON first, then its fixed
ProvisionDeviceRequestMsg, answered in the format that worked (spec §10).

The fixed messages are compiled by protoc, as at start-up; the parsing itself is pure."""

import json
import shutil

import pytest

from bridge.core import codes, provision
from bridge.core.actions import Provision, Request
from bridge.core.session import GatewayCore
from bridge.edge import protoc
from coreconfig import core_config, handled

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

NOW = 1700000000.0
DEPTH = 32


@pytest.fixture(scope="module")
def tb():
    return protoc.fixed_messages()


def status_name(tb, answer):
    return answer.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[
        answer.status].name


def kind_name(tb, answer):
    return answer.DESCRIPTOR.fields_by_name["credentialsType"].enum_type.values_by_number[
        answer.credentialsType].name


def proto_request(tb, **fields):
    msg = tb.ProvisionDeviceRequestMsg(deviceName=fields.pop("name", "Meter 7"))
    msg.provisionDeviceCredentialsMsg.provisionDeviceKey = fields.pop("key", "pkey")
    msg.provisionDeviceCredentialsMsg.provisionDeviceSecret = fields.pop("secret", "psecret")
    if "token" in fields:
        msg.credentialsDataProto.validateDeviceTokenRequestMsg.token = fields.pop("token")
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg.SerializeToString()


def test_a_json_request_is_read_as_json(tb):
    body = {"deviceName": "A", "provisionDeviceKey": "k", "provisionDeviceSecret": "s"}
    request = provision.parse_request(json.dumps(body).encode(), DEPTH, tb)
    assert (request.device_name, request.key, request.secret, request.protobuf) == (
        "A", "k", "s", False)
    assert not request.protobuf  # the edge answers it with ThingsBoard's JSON, as it is


def test_json_with_a_missing_key_is_4_00_and_not_tried_as_protobuf(tb):
    with pytest.raises(codes.BadRequest, match="provisionDeviceSecret is required"):
        provision.parse_request(b'{"provisionDeviceKey": "k"}', DEPTH, tb)


def test_an_empty_request_is_an_empty_protobuf_message_as_thingsboard_reads_it(tb):
    # spec 2.6: not JSON, so an empty ProvisionDeviceRequestMsg (answered NOT_FOUND in
    # protobuf); JSON only without the fixed messages: 4.00
    request = provision.parse_request(b"", DEPTH, tb)
    assert (request.key, request.secret, request.protobuf) == ("", "", True)
    with pytest.raises(codes.BadRequest, match="empty payload"):
        provision.parse_request(b"", DEPTH, None)


def test_a_protobuf_request_is_read_with_its_json_equivalent_for_the_platform(tb):
    request = provision.parse_request(proto_request(tb, token="myToken", gateway=True),
                                      DEPTH, tb)
    assert (request.device_name, request.key, request.secret, request.credentials_type,
            request.token, request.protobuf) == (
        "Meter 7", "pkey", "psecret", "ACCESS_TOKEN", "myToken", True)
    assert request.body == {"deviceName": "Meter 7", "provisionDeviceKey": "pkey",
                            "provisionDeviceSecret": "psecret",
                            "credentialsType": "ACCESS_TOKEN", "token": "myToken",
                            "gateway": True}


def test_protobuf_mqtt_basic_credentials_use_the_json_apis_names(tb):
    msg = tb.ProvisionDeviceRequestMsg(credentialsType=2)  # MQTT_BASIC
    msg.provisionDeviceCredentialsMsg.provisionDeviceKey = "k"
    msg.provisionDeviceCredentialsMsg.provisionDeviceSecret = "s"
    basic = msg.credentialsDataProto.validateBasicMqttCredRequestMsg
    basic.clientId, basic.userName, basic.password = "c1", "u1", "p1"
    request = provision.parse_request(msg.SerializeToString(), DEPTH, tb)
    assert request.credentials_type == "MQTT_BASIC" and request.token is None
    assert {k: request.body[k] for k in ("clientId", "username", "password")} == {
        "clientId": "c1", "username": "u1", "password": "p1"}


def test_protobuf_answers_are_provision_device_response_msgs(tb):
    answer = tb.ProvisionDeviceResponseMsg.FromString(
        provision.protobuf_answer(provision.success("t9"), tb))
    assert (status_name(tb, answer), kind_name(tb, answer),
            answer.credentialsValue) == ("SUCCESS", "ACCESS_TOKEN", "t9")
    for doc, status in ((provision.not_found(), "NOT_FOUND"), (provision.failure(), "FAILURE")):
        answer = tb.ProvisionDeviceResponseMsg.FromString(
            provision.protobuf_answer(doc, tb))
        assert status_name(tb, answer) == status
        assert answer.credentialsValue == ""  # the proto has no errorMsg
    # the platform's MQTT_BASIC answer holds an object: it goes as JSON text
    creds = {"clientId": "c", "userName": "u", "password": "p"}
    answer = tb.ProvisionDeviceResponseMsg.FromString(provision.protobuf_answer(
        {"status": "SUCCESS", "credentialsType": "MQTT_BASIC", "credentialsValue": creds}, tb))
    assert json.loads(answer.credentialsValue) == creds
    assert kind_name(tb, answer) == "MQTT_BASIC"


def test_neither_json_nor_protobuf_is_4_00_naming_both(tb):
    with pytest.raises(codes.BadRequest) as info:
        provision.parse_request(b"\xff\xff\xff", DEPTH, tb)
    assert "not UTF-8" in info.value.reason
    assert "nor does it decode as transport.ProvisionDeviceRequestMsg" in info.value.reason
    with pytest.raises(codes.BadRequest, match="unknown credentialsType 9"):
        provision.parse_request(proto_request(tb, credentialsType=9), DEPTH, tb)
    with pytest.raises(codes.BadRequest, match="token must be"):
        provision.parse_request(proto_request(tb, token="a/b"), DEPTH, tb)


def test_without_the_fixed_messages_provisioning_reads_json_only(tb):
    with pytest.raises(codes.BadRequest, match="provision: payload is not UTF-8"):
        provision.parse_request(b"\xff\xff", DEPTH, None)


def test_the_core_hands_a_protobuf_request_to_the_edge_marked_protobuf(tb):
    core = GatewayCore(core_config(), lambda token: None, fixed=tb)
    [action] = handled(core, Request(1, codes.POST, ("api", "v1", "provision"),
                                     proto_request(tb, name="  Meter 8 "), remote=("10.0.0.1", 5)),
                       NOW)
    assert type(action) is Provision and action.request.protobuf
    assert action.request.device_name == "Meter 8"
