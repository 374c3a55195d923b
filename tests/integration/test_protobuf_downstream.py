"""Protobuf downlinks through the real bridge (shipped defaults plus device_profiles), real
mosquitto, the platform played through it (PlatformSim): aiocoap observes, libcoap reads
and posts; the test decodes what the device gets with its own build of ThingsBoard's protos
and of the profile's schemas."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import BridgeProcess, Mosquitto
from platform_sim import PlatformSim
from protobuild import TB_QUEUE, message_class
from test_protobuf import LIBCOAP

pytestmark = pytest.mark.integration
HERE = os.path.dirname(os.path.abspath(__file__))

RPC_REQUEST = """syntax = "proto3";
package valve;
message ValveCommand {
  optional string method = 1;
  optional int32 requestId = 2;
  Params params = 3;
  message Params { optional string pin = 1; optional int32 value = 2; repeated string tags = 3; }
}
"""

RPC_RESPONSE = """syntax = "proto3";
package valve;
enum Outcome { OUTCOME_UNKNOWN = 0; OUTCOME_OPEN = 1; OUTCOME_CLOSED = 2; }
message ValveReply { Outcome outcome = 1; int64 took_us = 2; optional string detail = 3; }
"""

TELEMETRY = """syntax = "proto3";
package valve;
message Flow { optional double litres = 1; }
"""

ERROR = "Failed to convert device RPC command to CoAP msg"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    broker = Mosquitto(str(tmp_path_factory.mktemp("pbdbroker"))).start()
    platform = PlatformSim(broker.port)
    workdir = str(tmp_path_factory.mktemp("pbdbridge"))
    for name, text in (("rpc_request.proto", RPC_REQUEST), ("rpc_response.proto", RPC_RESPONSE),
                       ("flow.proto", TELEMETRY)):
        with open(os.path.join(workdir, name), "w") as handle:
            handle.write(text)
    valve = {"transportPayloadType": "PROTOBUF",
             "deviceTelemetryProtoSchemaFile": "flow.proto",
             "deviceRpcRequestProtoSchemaFile": "rpc_request.proto",
             "deviceRpcResponseProtoSchemaFile": "rpc_response.proto"}
    bridge = BridgeProcess(workdir, broker.port, device_profiles={
        "valve": valve,
        "valve-json-down": dict(valve, useJsonPayloadFormatForDefaultDownlinkTopics=True),
    })
    for n in range(1, 7):
        bridge.add_device("Valve %d" % n, "valve%d" % n, "valve")
    bridge.add_device("Valve J", "valveJ", "valve-json-down")
    bridge.start()
    yield platform, bridge, workdir
    bridge.stop()
    platform.close()
    broker.stop()


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    """The test's own classes: ThingsBoard's fixed protos and the profile's RPC schemas."""
    tmp = tmp_path_factory.mktemp("pbdprotos")

    class TB:
        Update = message_class(tmp, TB_QUEUE, "transport.AttributeUpdateNotificationMsg")
        Response = message_class(tmp, TB_QUEUE, "transport.GetAttributeResponseMsg")
        Command = message_class(tmp, RPC_REQUEST, "valve.ValveCommand")
        Reply = message_class(tmp, RPC_RESPONSE, "valve.ValveReply")
        Flow = message_class(tmp, TELEMETRY, "valve.Flow")
    return TB


def kvs(items):
    out = []
    for item in items:
        kv = item.kv
        kind = kv.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[kv.type].name
        value = {"BOOLEAN_V": kv.bool_v, "LONG_V": kv.long_v, "DOUBLE_V": kv.double_v,
                 "STRING_V": kv.string_v, "JSON_V": kv.json_v}[kind]
        out.append((kv.key, kind, value))
    return out


def observer(bridge, token, feature, count, timeout=10):
    """aiocoap observing ``feature`` of the device; it prints a JSON line per response."""
    return subprocess.Popen([sys.executable, os.path.join(HERE, "aiocoap_observe.py"),
                             "%s/api/v1/%s/%s" % (bridge.url, token, feature), str(count),
                             str(timeout)], stdout=subprocess.PIPE, text=True)


def line(proc):
    text = proc.stdout.readline()
    assert text, "the observer ended early"
    return json.loads(text)


def libcoap(*args):
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
    done = subprocess.run([LIBCOAP, "-v", "6"] + list(args), capture_output=True, timeout=30)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)
    return (codes[-1] if codes else None), out


def wait_observing(platform, device):
    """An observer of /rpc connects its device: wait for that before sending RPCs."""
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == device)
    time.sleep(0.3)


# -- shared attributes ------------------------------------------------------------------

def test_attribute_notifications_are_thingsboards_fixed_proto_with_content_format_42(env, tb):
    platform, bridge, _ = env
    platform.set_attributes("Valve 1", {}, {"mode": "eco", "level": 3})
    proc = observer(bridge, "valve1", "attributes", 3)
    first = line(proc)
    assert (first["code"], first["content_format"]) == ("2.05", 42)
    current = tb.Update.FromString(bytes.fromhex(first["hex"]))
    assert sorted(kvs(current.sharedUpdated)) == [("level", "LONG_V", 3),
                                                  ("mode", "STRING_V", "eco")]
    before = int(time.time() * 1000)
    platform.push_attributes("Valve 1", {"level": 4.5, "cfg": {"a": [1, 2]}, "on": True})
    second = line(proc)
    platform.push_attributes("Valve 1", {"deleted": ["cfg"]})
    third = line(proc)
    proc.wait(10)
    update = tb.Update.FromString(bytes.fromhex(second["hex"]))
    assert kvs(update.sharedUpdated) == [("level", "DOUBLE_V", 4.5),
                                         ("cfg", "JSON_V", '{"a":[1,2]}'),
                                         ("on", "BOOLEAN_V", True)]
    assert all(item.ts >= before for item in update.sharedUpdated)  # the receipt time
    deleted = tb.Update.FromString(bytes.fromhex(third["hex"]))
    assert (list(deleted.sharedUpdated), list(deleted.sharedDeleted)) == ([], ["cfg"])
    assert second["content_format"] == third["content_format"] == 42
    assert first["observe"] < second["observe"] < third["observe"]


def test_a_long_protobuf_notification_reaches_aiocoap_whole_through_block2(env, tb):
    platform, bridge, _ = env
    platform.set_attributes("Valve 2", {}, {})
    proc = observer(bridge, "valve2", "attributes", 2)
    first = line(proc)
    assert (first["code"], first["hex"]) == ("2.05", "")  # no shared attributes: empty
    note = "".join(chr(ord("a") + n % 26) for n in range(3000))
    platform.push_attributes("Valve 2", {"note": note})
    second = line(proc)
    proc.wait(10)
    assert second["content_format"] == 42
    assert kvs(tb.Update.FromString(bytes.fromhex(second["hex"])).sharedUpdated) == [
        ("note", "STRING_V", note)]  # three blocks, put together


def test_attribute_read_is_a_get_attribute_response_msg(env, tb, tmp_path):
    platform, bridge, _ = env
    platform.set_attributes("Valve 3", {"fw": "1.2"}, {"mode": "eco", "limit": 7})
    out = tmp_path / "read.bin"
    code, log = libcoap("-m", "get", "-o", str(out),
                        bridge.url
                        + "/api/v1/valve3/attributes?clientKeys=fw&sharedKeys=mode,limit")
    assert code == "2.05", log
    assert "Content-Format:application/octet-stream" in log
    response = tb.Response.FromString(out.read_bytes())
    assert kvs(response.clientAttributeList) == [("fw", "STRING_V", "1.2")]
    assert sorted(kvs(response.sharedAttributeList)) == [("limit", "LONG_V", 7),
                                                         ("mode", "STRING_V", "eco")]


# -- server-side RPC -------------------------------------------------------------------------

def test_server_rpc_round_trip_over_observe_with_a_custom_schema(env, tb, tmp_path):
    platform, bridge, _ = env
    proc = observer(bridge, "valve4", "rpc", 2)
    first = line(proc)
    assert (first["code"], first["hex"]) == ("2.03", "")
    wait_observing(platform, "Valve 4")
    platform.send_rpc("Valve 4", 501, "setGpio", {"pin": 23, "value": 1, "tags": ["a", 2]})
    second = line(proc)
    proc.wait(10)
    assert (second["code"], second["content_format"]) == ("2.05", 42)
    command = tb.Command.FromString(bytes.fromhex(second["hex"]))
    assert (command.method, command.requestId) == ("setGpio", 501)
    # Java's JSON parser reads the number 23 into the string field pin, as "23"
    assert (command.params.pin, command.params.value, list(command.params.tags)) == (
        "23", 1, ["a", "2"])
    reply = tmp_path / "reply.bin"
    reply.write_bytes(tb.Reply(outcome=1, took_us=2 ** 33).SerializeToString())
    code, log = libcoap("-m", "post", "-t", "42", "-f", str(reply),
                        "%s/api/v1/valve4/rpc/%d" % (bridge.url, command.requestId))
    assert code == "2.01", log
    platform.wait_for("v1/gateway/rpc", lambda p: p == {
        "device": "Valve 4", "id": 501,
        "data": {"outcome": "OUTCOME_OPEN", "tookUs": "8589934592"}})


def test_an_undecodable_rpc_reply_is_4_00(env, tmp_path):
    platform, bridge, _ = env
    reply = tmp_path / "bad.bin"
    reply.write_bytes(b'{"not": "protobuf"}')
    code, log = libcoap("-m", "post", "-f", str(reply), bridge.url + "/api/v1/valve4/rpc/502")
    assert code == "4.00" and "does not decode as valve.ValveReply" in log, log


def test_params_that_do_not_fit_get_thingsboards_error_and_the_relation_stays(env, tb):
    platform, bridge, _ = env
    proc = observer(bridge, "valve5", "rpc", 2)
    assert line(proc)["code"] == "2.03"
    wait_observing(platform, "Valve 5")
    platform.send_rpc("Valve 5", 601, "setGpio", "not an object")  # params is a message
    platform.wait_for("v1/gateway/rpc", lambda p: p == {
        "device": "Valve 5", "id": 601, "data": {"error": ERROR}})
    assert "RPC 601 for Valve 5 not sent" in bridge.read_log()
    platform.send_rpc("Valve 5", 602, "setGpio", {"pin": "4"})
    second = line(proc)  # the same observation: the next RPC that fits
    proc.wait(10)
    command = tb.Command.FromString(bytes.fromhex(second["hex"]))
    assert (command.requestId, command.params.pin) == (602, "4")


def test_use_json_payload_format_for_default_downlink_topics_keeps_downlinks_json(env, tb,
                                                                                 tmp_path):
    platform, bridge, _ = env
    platform.set_attributes("Valve J", {}, {"mode": "eco", "unit": "C"})
    proc = observer(bridge, "valveJ", "attributes", 1)
    first = line(proc)
    proc.wait(10)
    assert (first["content_format"], json.loads(first["payload"])) == (
        50, {"mode": "eco", "unit": "C"})
    rpc = observer(bridge, "valveJ", "rpc", 2)
    assert line(rpc)["code"] == "2.03"
    wait_observing(platform, "Valve J")
    platform.send_rpc("Valve J", 701, "setGpio", {"pin": {"any": "json"}})
    second = line(rpc)
    rpc.wait(10)
    assert second["content_format"] == 50
    assert json.loads(second["payload"]) == {"id": 701, "method": "setGpio",
                                             "params": {"pin": {"any": "json"}}}
    # uplinks are still protobuf
    payload = tmp_path / "flow.bin"
    payload.write_bytes(tb.Flow(litres=2.5).SerializeToString())
    code, log = libcoap("-m", "post", "-f", str(payload), bridge.url + "/api/v1/valveJ/telemetry")
    assert code == "2.01", log
    platform.wait_for("v1/gateway/telemetry", lambda p: any(
        e["values"] == {"litres": 2.5} for e in p.get("Valve J", [])))
