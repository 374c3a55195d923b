"""Efento NB-IoT sensors through the real bridge (shipped defaults plus an EFENTO device
profile), real mosquitto: libcoap's coap-client-notls posts the golden payloads (written
byte by byte by tests/efentowire.py, expected values from ThingsBoard's
CoapEfentoTransportResourceTest, see tests/core/test_efento.py) over CON and NON."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

import efentowire as wire
from conftest import BridgeProcess
from test_protobuf import LIBCOAP

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def efento_bridge(broker, tmp_path_factory):
    process = BridgeProcess(str(tmp_path_factory.mktemp("efento")), broker.port,
                            device_profiles={"efento": {"coapDeviceType": "EFENTO"}})
    process.add_device("Efento 1", "efento-1", "efento")
    process.add_device("Efento 2", "efento-2", "efento")
    process.add_device("Plain", "plain-1", "default")
    process.start()
    yield process
    process.stop()


def coap(bridge, tmp_path, method, resource, payload=None, non=False, output=None):
    """libcoap on ``/efento/<resource>``: (the codes it received, its output)."""
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
    args = [LIBCOAP, "-v", "6", "-m", method, "-B", "3"]
    if payload is not None:
        path = tmp_path / "efento.bin"
        path.write_bytes(payload)
        args += ["-f", str(path)]
    if non:
        args.append("-N")
    if output is not None:
        args += ["-o", str(output)]
    done = subprocess.run(args + ["%s/efento/%s" % (bridge.url, resource)],
                          capture_output=True, timeout=30)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    # at -v 6 libcoap prints each message, the request first: the rest is what came back
    return re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out), out


def telemetry_of(platform, device, key):
    payload = platform.wait_for("v1/gateway/telemetry",
                                lambda p: any(key in e["values"] for e in p.get(device, [])))
    return payload[device]


def test_con_measurements_get_2_01_and_reach_the_platform_as_thingsboard_maps_them(
        efento_bridge, platform, tmp_path):
    """checkContinuousSensorWithSomeMeasurements's message, over CON."""
    t = int(time.time()) - 3600
    payload = wire.measurements([wire.channel("TEMPERATURE", t, [223, 224]),
                                 wire.channel("HUMIDITY", t, [20, 30])], token="efento-1",
                                period_factor=5)
    codes, out = coap(efento_bridge, tmp_path, "post", "m", payload)
    assert codes == ["2.01"], out
    entries = telemetry_of(platform, "Efento 1", "temperature_1")
    assert entries == [
        {"ts": t * 1000, "values": {"serial": "000004D2", "battery": "ok",
                                    "next_transmission_at": "1970-01-01 00:16:40 UTC",
                                    "signal": 0, "measurement_interval_1": 900,
                                    "temperature_1": 22.3, "measurement_interval_2": 900,
                                    "humidity_2": 20.0}},
        {"ts": (t + 900) * 1000, "values": {"temperature_1": 22.4, "humidity_2": 30.0}}]


def test_non_measurements_are_stored_and_get_no_answer(efento_bridge, platform, tmp_path):
    """checkBinarySensorWhenValueIsVarying's flooding message, over NON: no response at all
    (ThingsBoard answers only CON requests, for the sensors' batteries), yet delivered."""
    t = int(time.time()) - 600
    payload = wire.measurements([wire.channel("FLOODING", t, [1, -10])], token="efento-2",
                                period_factor=1)
    codes, out = coap(efento_bridge, tmp_path, "post", "m", payload, non=True)
    assert codes == [], out
    entries = telemetry_of(platform, "Efento 2", "flooding_1")
    assert [(e["ts"], e["values"].get("flooding_1")) for e in entries] == [
        (t * 1000, "WATER_DETECTED"), ((t + 9) * 1000, "OK")]


def test_device_info_and_configuration_over_con_and_non(efento_bridge, platform, tmp_path):
    """getEfentoDeviceInfo_parsesSwVersion and _parsesRuntimeInfo's messages (CON), and a
    configuration (getEfentoConfiguration_parsesEndpointFields, NON) as client attributes."""
    info = wire.device_info(sw_version=1546, token="efento-1", runtime_message=wire.runtime(
        3600, [10, 5, 9], 25, 3200, 20, 1_700_000_000, 40, 10, [0, 1]))
    before = int(time.time() * 1000)
    codes, out = coap(efento_bridge, tmp_path, "post", "i", info)
    assert codes == ["2.01"], out
    [entry] = telemetry_of(platform, "Efento 1", "sw_version")
    assert entry["ts"] >= before - 1000  # the time of receipt
    values = entry["values"]
    assert (values["sw_version"], values["up_time"], values["runtime_errors"],
            values["battery_reset_timestamp"], values["modem_types"]) == (
        1546, 3600, 2, "14 Nov 2023 22:13:20 +0000", "MODEM_TYPE_UNSPECIFIED")
    config = b"".join([wire.text(wire.CONFIG["cloud_token"], "efento-2"),
                       wire.text(wire.CONFIG["data_endpoint"], "/m"),
                       wire.text(wire.CONFIG["time_endpoint"], "/t")])
    codes, out = coap(efento_bridge, tmp_path, "post", "c", config, non=True)
    assert codes == [], out
    attributes = platform.wait_for("v1/gateway/attributes",
                                   lambda p: "Efento 2" in p)["Efento 2"]
    assert (attributes["dataEndpoint"], attributes["timeEndpoint"],
            attributes["transmissionInterval"], attributes["channelTypes"]) == (
        "/m", "/t", 0, [])


def test_errors_are_answered_as_thingsboard_does(efento_bridge, tmp_path):
    cases = [("post", "m", b"\x0a\xff", "5.00"),  # does not decode
             ("post", "m", wire.measurements([wire.channel("TEMPERATURE", 1, [1])],
                                             token="nobody"), "4.01"),
             ("post", "m", wire.measurements([wire.channel("TEMPERATURE", 1, [1])],
                                             token="plain-1"), "4.00"),  # not EFENTO
             ("post", "x", b"", "4.00"), ("get", "m", None, "4.00"),
             ("put", "m", b"", "4.05")]
    for method, resource, payload, expected in cases:
        codes, out = coap(efento_bridge, tmp_path, method, resource, payload)
        assert codes == [expected], (method, resource, out)
    # NON requests get their errors too
    codes, out = coap(efento_bridge, tmp_path, "post", "m", b"\x0a\xff", non=True)
    assert codes == ["5.00"], out


def test_time_is_four_bytes_of_big_endian_epoch_seconds(efento_bridge, tmp_path):
    answer = tmp_path / "time.bin"
    before = int(time.time())
    codes, out = coap(efento_bridge, tmp_path, "get", "t", output=answer)
    assert codes == ["2.05"], out
    data = answer.read_bytes()
    assert len(data) == 4 and before - 1 <= int.from_bytes(data, "big") <= time.time() + 1


def test_an_efento_device_on_api_v1_gets_4_00(efento_bridge, tmp_path):
    done = subprocess.run([LIBCOAP, "-v", "6", "-m", "post", "-e", '{"t": 1}',
                           efento_bridge.url + "/api/v1/efento-1/telemetry"],
                          capture_output=True, timeout=30)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert re.findall(r"t:ACK c:(\d\.\d\d)", out) == ["4.00"], out
