"""Efento sensors: the mapping of their messages (golden cases) and the device API in the core.

The golden cases are ThingsBoard's own, from
``common/transport/coap/src/test/java/org/thingsboard/server/transport/coap/efento/
CoapEfentoTransportResourceTest.java`` as of thingsboard/thingsboard master
dfe65d5abc3aa959aaa853952d74943fbd6867bd (merged 2026-07-02; the newest snapshot of that
repository there was on 2026-12-07, read again then: its checkContinuousSensor expects
voltage_1 240.0 for 2400 and current_1 5.5 for 550, and CoapEfentoTransportResource divides
VOLTAGE by 10 and CURRENT by 100, as here; 2024 copies of that test expected 2400.0 and
550.0, unscaled, and other pulse-counter cases) (each test below names the one it
follows): the same
messages, and the telemetry and attributes ThingsBoard's test expects of them, with the
values its assertions leave open (metadata keys, the measurement intervals, the default
measurements) worked out from ThingsBoard's mapping. The messages are written byte by byte
(tests/efentowire.py), not with the bridge's .proto, and decoded by the bridge.
"""

import shutil

import pytest

from bridge.core import codes
from bridge.core.actions import Authenticated, Device, Reply, Request, Store
from bridge.core.formats import efento as mapping
from bridge.core.formats.efento import EfentoFormat
from bridge.core.formats.json import JsonFormat
from bridge.core.session import GatewayCore
from bridge.edge import protoc
from coreconfig import core_config
import efentowire as wire

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc missing (Debian: protobuf-compiler)")

T = 1_700_000_000  # ThingsBoard's tests take the time of the run; any time will do
MS = T * 1000
KNOWN = 1_700_000_000
KNOWN_TEXT = "14 Nov 2023 22:13:20 +0000"
DEFAULTS = {"serial": "000004D2", "battery": "ok", "next_transmission_at":
            "1970-01-01 00:16:40 UTC", "signal": 0}  # the tests' serial 1234, 1000 s


@pytest.fixture(scope="module")
def reader():
    return EfentoFormat(protoc.efento_messages())


def entries(reader, payload):
    return [(e.ts, e.values) for e in mapping.measurements(
        reader.decode("ProtoMeasurements", payload))]


# == measurements ===========================================================

def test_continuous_sensor_with_some_measurements(reader):
    """checkContinuousSensorWithSomeMeasurements: two channels, two samples each, 900 s apart."""
    payload = wire.measurements([wire.channel("TEMPERATURE", T, [223, 224]),
                                 wire.channel("HUMIDITY", T, [20, 30])], period_factor=5)
    assert entries(reader, payload) == [
        (MS, dict(DEFAULTS, measurement_interval_1=900, temperature_1=22.3,
                  measurement_interval_2=900, humidity_2=20.0)),
        (MS + 900_000, {"temperature_1": 22.4, "humidity_2": 30.0})]


CONTINUOUS = [  # checkContinuousSensor's cases: type, offsets, key, value (and metadata)
    ("TEMPERATURE", 223, "temperature_1", 22.3, None),
    ("WATER_METER", 1050, "pulse_counter_water_1", 1050.0, None),
    ("HUMIDITY", 20, "humidity_1", 20.0, None),
    ("ATMOSPHERIC_PRESSURE", 1013, "pressure_1", 101.3, None),
    ("DIFFERENTIAL_PRESSURE", 500, "pressure_diff_1", 500.0, None),
    ("PULSE_CNT", 300, "pulse_cnt_1", 300.0, None),
    ("IAQ", 150, "iaq_1", 50, ("iaq_metadata_1", 0)),
    ("ELECTRICITY_METER", 1200, "watt_hour_1", 1200.0, None),
    ("SOIL_MOISTURE", 35, "soil_moisture_1", 35.0, None),
    ("AMBIENT_LIGHT", 500, "ambient_light_1", 50.0, None),
    ("HIGH_PRESSURE", 200000, "high_pressure_1", 200000.0, None),
    ("DISTANCE_MM", 1500, "distance_mm_1", 1500.0, None),
    ("HUMIDITY_ACCURATE", 525, "humidity_relative_1", 52.5, None),
    ("STATIC_IAQ", 110, "static_iaq_1", 36, ("static_iaq_metadata_1", 2)),
    ("CO2_EQUIVALENT", 450, "co2_1", 150, ("co2_metadata_1", 0)),
    ("BREATH_VOC", 220, "breath_voc_1", 73, ("breath_voc_metadata_1", 1)),
    ("PERCENTAGE", 80, "percentage_1", 0.8, None),
    ("VOLTAGE", 2400, "voltage_1", 240.0, None),
    ("CURRENT", 550, "current_1", 5.5, None),
    ("CURRENT_PRECISE", 275, "current_precise_1", 0.275, None),
]


@pytest.mark.parametrize("kind, offset, key, value, metadata", CONTINUOUS)
def test_continuous_sensor(reader, kind, offset, key, value, metadata):
    """checkContinuousSensor: one sample of each continuous type (factor 0: 1 x 180 s)."""
    [(ts, values)] = entries(reader, wire.measurements([wire.channel(kind, T, [offset])]))
    expected = dict(DEFAULTS, measurement_interval_1=180, **{key: value})
    if metadata:
        expected[metadata[0]] = metadata[1]
    assert (ts, values) == (MS, expected)
    assert type(values[key]) is type(value)  # a double stays a double (20.0, not 20)


def test_a_start_point_and_sensor_error_codes(reader):
    """Efento's own example (its ProtoChannel comment): start 100, offsets 15, 20 and an
    error code: 11.5 and 12 degrees, then no value; a period of 60 s."""
    payload = wire.measurements([wire.channel("TEMPERATURE", T, [15, 20, 8388557], 100)],
                                period_base=60, period_factor=1)
    assert entries(reader, payload) == [
        (MS, dict(DEFAULTS, measurement_interval_1=60, temperature_1=11.5)),
        (MS + 60_000, {"temperature_1": 12.0})]


@pytest.mark.parametrize("minor, minor_offset, major, major_offset, key, total", [
    ("WATER_METER_ACC_MINOR", 15 * 6, "WATER_METER_ACC_MAJOR", 625 * 4, "water_cnt_acc_",
     625 * 100 + 15),
    ("PULSE_CNT_ACC_MINOR", 10 * 6, "PULSE_CNT_ACC_MAJOR", 300 * 4, "pulse_cnt_acc_",
     300 * 1000 + 10),
    ("ELEC_METER_ACC_MINOR", 12 * 6, "ELEC_METER_ACC_MAJOR", 100 * 4, "elec_meter_acc_",
     100 * 1000 + 12),
    ("PULSE_CNT_ACC_WIDE_MINOR", 13 * 6, "PULSE_CNT_ACC_WIDE_MAJOR", 440 * 4,
     "pulse_cnt_acc_wide_", 440 * 1000000 + 13),
])
def test_pulse_counter_sensors(reader, minor, minor_offset, major, major_offset, key, total):
    """checkPulseCounterSensors: the major channel first, the minor second, which names the
    major (offset % 6 + 1): the total on the minor's channel, the major's value dropped."""
    payload = wire.measurements([wire.channel(major, T, [major_offset]),
                                 wire.channel(minor, T, [minor_offset])])
    [(ts, values)] = entries(reader, payload)
    assert (ts, values) == (MS, dict(DEFAULTS, measurement_interval_1=180,
                                     measurement_interval_2=180,
                                     **{key + "metadata_1": 0, key + "total_2": total}))


def test_binary_sensor(reader):
    """checkBinarySensor: offsets 1, 1 (the same state twice: the second is not read);
    factor 0 is 14 for a binary sensor."""
    payload = wire.measurements([wire.channel("OK_ALARM", T, [1, 1])])
    assert entries(reader, payload) == [
        (MS, dict(DEFAULTS, measurement_interval_1=180 * 14, ok_alarm_1="ALARM"))]


@pytest.mark.parametrize("kind, key, positive, negative", [
    ("OK_ALARM", "ok_alarm_1", "ALARM", "OK"),
    ("FLOODING", "flooding_1", "WATER_DETECTED", "OK"),
    ("OUTPUT_CONTROL", "output_control_1", "ON", "OFF"),
])
def test_binary_sensor_when_value_is_varying(reader, kind, key, positive, negative):
    """checkBinarySensorWhenValueIsVarying: offsets 1, -10: the first state at the
    timestamp, the second 9 s later (|offset| - 1)."""
    payload = wire.measurements([wire.channel(kind, T, [1, -10])], period_factor=1)
    assert entries(reader, payload) == [
        (MS, dict(DEFAULTS, measurement_interval_1=180, **{key: positive})),
        (MS + 9000, {key: negative})]


def test_measurements_without_channels_are_refused(reader):
    """checkExceptionWhenChannelsListIsEmpty: ThingsBoard raises (5.00); here 4.00."""
    msg = reader.decode("ProtoMeasurements", wire.measurements([], period_factor=1))
    with pytest.raises(codes.BadRequest, match="no channels"):
        mapping.measurements(msg)


def test_types_thingsboard_ignores_give_no_values(reader):
    """A gas channel (no key in ThingsBoard's mapping) and one with no samples: only the
    default measurements and the other channel's."""
    payload = wire.measurements([wire.channel("CO_GAS", T, [5]), wire.channel("HUMIDITY", T, []),
                                 wire.channel("TEMPERATURE", T + 60, [200])])
    assert entries(reader, payload) == [
        (MS, dict(DEFAULTS, measurement_interval_1=180)),
        (MS + 60_000, {"measurement_interval_3": 180, "temperature_3": 20.0})]


def test_a_payload_that_is_not_the_message_is_5_00(reader):
    with pytest.raises(codes.InternalServerError, match="ProtoMeasurements"):
        reader.decode("ProtoMeasurements", b"\x0a\xff\xff")


# == device information =====================================================

def info(reader, payload):
    return mapping.device_info(reader.decode("ProtoDeviceInfo", payload), reader.messages)


def test_device_info_sw_version(reader):
    """getEfentoDeviceInfo_parsesSwVersion."""
    assert info(reader, wire.device_info(sw_version=1546))["sw_version"] == 1546


def test_device_info_all_memory_statistics(reader):
    """getEfentoDeviceInfo_parsesAllMemoryStatistics (times in UTC here)."""
    undefined = 4294967295
    memory = [0, KNOWN, 1048576, 512000, 1024, 256, 100, 10, 2, 500, 400, 300, 200, 100, 50,
              undefined, undefined, undefined, KNOWN, KNOWN, KNOWN, 42]
    values = info(reader, wire.device_info(memory=memory))
    assert {k: values[k] for k in [n.lstrip("*") for n in mapping.MEMORY_STATISTICS]} == {
        "nv_storage_status": 0, "timestamp_of_the_end_of_collecting_statistics": KNOWN_TEXT,
        "capacity_of_memory_in_bytes": 1048576, "used_space_in_bytes": 512000,
        "size_of_invalid_packets_in_bytes": 1024, "size_of_corrupted_packets_in_bytes": 256,
        "number_of_valid_packets": 100, "number_of_invalid_packets": 10,
        "number_of_corrupted_packets": 2, "number_of_all_samples_for_channel_1": 500,
        "number_of_all_samples_for_channel_2": 400, "number_of_all_samples_for_channel_3": 300,
        "number_of_all_samples_for_channel_4": 200, "number_of_all_samples_for_channel_5": 100,
        "number_of_all_samples_for_channel_6": 50,
        "timestamp_of_the_first_binary_measurement": "Undefined",
        "timestamp_of_the_last_binary_measurement": "Undefined",
        "timestamp_of_the_first_binary_measurement_sent": "Undefined",
        "timestamp_of_the_first_continuous_measurement": KNOWN_TEXT,
        "timestamp_of_the_last_continuous_measurement": KNOWN_TEXT,
        "timestamp_of_the_last_continuous_measurement_sent": KNOWN_TEXT,
        "nvm_write_counter": 42}


BC66 = [0, 1000, 42, 123456, -90, -10, -80, 15, 3, 1234, 1, -30, 2, 999, 1, 100, -95, 5, 3,
        4, 2, 50000, 60000, 200, 150, 10, 8, 1000, 1200, 900, 1100, 5000, 300, 100]


def test_device_info_modem_bc66(reader):
    """getEfentoDeviceInfo_parsesModemInfo: 34 parameters, BC66 names."""
    values = info(reader, wire.device_info(modem_message=wire.modem("BC66", BC66)))
    assert values["modem_types"] == "MODEM_TYPE_BC66"
    assert [values[name] for name in mapping.BC66_PARAMETERS] == BC66
    assert (values["sc_EARNFCN_offset"], values["sc_EARFCN"], values["nc_EARNFCN_offset"],
            values["MAC_DL_tput"], values["tx_time"]) == (0, 1000, 1, 1100, 100)


def test_device_info_modem_bc660(reader):
    """getEfentoDeviceInfo_parsesModemInfoBC660: 22 parameters, and the newer modem fields."""
    params = [1000, 5, 42, 123456, -90, -10, -80, 15, 3, 1234, 1, -30, 2, 999, 100, -95, -12,
              5000, 300, 100, 1, 26201]
    values = info(reader, wire.device_info(modem_message=wire.modem(
        "BC660", params, "89001012012341234120", "BC660_V2", "123456789012345",
        [10, 3600, 7200, 600])))
    assert {k: values[k] for k in ("modem_types", "sim_card_identification",
                                   "firmware_version", "modem_identification",
                                   "modem_transmissions_count",
                                   "modem_time_since_last_devinfo", "modem_total_psm_time",
                                   "modem_total_active_time", "sc_EARFCN", "sc_EARNFCN_offset",
                                   "nc_RSRQ", "sleep_duration", "PLMN_state",
                                   "select_PLMN")} == {
        "modem_types": "MODEM_TYPE_BC660", "sim_card_identification": "89001012012341234120",
        "firmware_version": "MODEM_FIRMWARE_VERSION_BC660_V2",
        "modem_identification": "123456789012345", "modem_transmissions_count": 10,
        "modem_time_since_last_devinfo": 3600, "modem_total_psm_time": 7200,
        "modem_total_active_time": 600, "sc_EARFCN": 1000, "sc_EARNFCN_offset": 5,
        "nc_RSRQ": -12, "sleep_duration": 5000, "PLMN_state": 1, "select_PLMN": 26201}
    assert "nc_EARNFCN_offset" not in values and "RLC_UL_BLER" not in values


def test_device_info_shared_modem(reader):
    """getEfentoDeviceInfo_parsesModemInfoSharedModem: four parameters."""
    values = info(reader, wire.device_info(modem_message=wire.modem(
        "SHARED_MODEM", [-90, -10, -80, 15], identification="SN-ABCDEF")))
    assert (values["modem_types"], values["modem_identification"], values["RSRP"],
            values["RSRQ"], values["RSSI"], values["SINR"]) == (
        "MODEM_TYPE_SHARED_MODEM", "SN-ABCDEF", -90, -10, -80, 15)
    assert "sc_EARFCN" not in values and "sc_EARNFCN_offset" not in values


def test_device_info_new_modem_fields(reader):
    """getEfentoDeviceInfo_parsesNewModemFields."""
    values = info(reader, wire.device_info(modem_message=wire.modem(
        "BC66", [0] * 34, "89012345678901234567", "READING_ERROR", "352519100417272",
        [5, 1800, 3600, 120])))
    assert (values["sim_card_identification"], values["firmware_version"],
            values["modem_identification"], values["modem_transmissions_count"],
            values["modem_time_since_last_devinfo"], values["modem_total_psm_time"],
            values["modem_total_active_time"]) == (
        "89012345678901234567", "MODEM_FIRMWARE_VERSION_READING_ERROR", "352519100417272",
        5, 1800, 3600, 120)


def test_device_info_runtime(reader):
    """getEfentoDeviceInfo_parsesRuntimeInfo: runtime_errors is their count."""
    values = info(reader, wire.device_info(runtime_message=wire.runtime(
        3600, [10, 5, 9], 25, 3200, 20, KNOWN, 40, 10, [0, 1])))
    assert {k: values[k] for k in (
        "up_time", "mcu_temp", "min_battery_voltage", "min_battery_mcu_temp",
        "battery_reset_timestamp", "max_mcu_temp", "min_mcu_temp",
        "counter_of_confirmable_messages_attempts",
        "counter_of_non_confirmable_messages_attempts", "counter_of_succeeded_messages",
        "runtime_errors")} == {
        "up_time": 3600, "mcu_temp": 25, "min_battery_voltage": 3200,
        "min_battery_mcu_temp": 20, "battery_reset_timestamp": KNOWN_TEXT,
        "max_mcu_temp": 40, "min_mcu_temp": 10, "counter_of_confirmable_messages_attempts": 10,
        "counter_of_non_confirmable_messages_attempts": 5, "counter_of_succeeded_messages": 9,
        "runtime_errors": 2}


def test_device_info_undefined_times(reader):
    """getEfentoDeviceInfo_undefinedTimestampRenderedAsUndefinedString."""
    memory = [0, 4294967295] + [0] * 13 + [4294967295] * 6 + [0]
    values = info(reader, wire.device_info(memory=memory))
    assert {values[name.lstrip("*")] for name in mapping.MEMORY_STATISTICS
            if name.startswith("*")} == {"Undefined"}


def test_device_info_with_fewer_items_keeps_what_it_has(reader):
    """ThingsBoard answers 5.00 when a list is shorter than it reads; here the values that
    are there are kept."""
    values = info(reader, wire.device_info(memory=[1, KNOWN], modem_message=wire.modem(
        "BC66", [7, 8]), runtime_message=wire.runtime(counters=[4])))
    assert (values["nv_storage_status"], values["sc_EARNFCN_offset"], values["sc_EARFCN"],
            values["counter_of_confirmable_messages_attempts"]) == (1, 7, 8, 4)
    assert "capacity_of_memory_in_bytes" not in values and "sc_PCI" not in values
    assert "counter_of_succeeded_messages" not in values


# == configuration ==========================================================

def config(reader, *fields):
    return reader.configuration_values(reader.decode("ProtoConfig", b"".join(fields)))


C = wire.CONFIG


def test_configuration_server_fields(reader):
    """getEfentoConfiguration_parsesServerCommunicationFields."""
    values = config(reader, wire.text(C["data_server_ip"], "18.184.24.239"),
                    wire.uint(C["data_server_port"], 5683),
                    wire.text(C["update_server_ip"], "efento.update.io"),
                    wire.uint(C["update_server_port_coap"], 5684),
                    wire.uint(C["update_server_port_udp"], 5685),
                    wire.uint(C["transmission_interval"], 300),
                    wire.uint(C["ack_interval"], 600), wire.uint(C["supervision_period"], 3600))
    assert {k: values[k] for k in ("dataServerIp", "dataServerPort", "updateServerIp",
                                   "updateServerPortCoap", "updateServerPortUdp",
                                   "transmissionInterval", "ackInterval",
                                   "supervisionPeriod")} == {
        "dataServerIp": "18.184.24.239", "dataServerPort": 5683,
        "updateServerIp": "efento.update.io", "updateServerPortCoap": 5684,
        "updateServerPortUdp": 5685, "transmissionInterval": 300, "ackInterval": 600,
        "supervisionPeriod": 3600}


def test_configuration_measurement_period_and_requests(reader):
    """getEfentoConfiguration_parsesMeasurementPeriod and _parsesBooleanRequestFields."""
    values = config(reader, wire.uint(C["measurement_period_base"], 60),
                    wire.uint(C["measurement_period_factor"], 5),
                    *[wire.uint(C[name], True) for name in (
                        "device_info_request", "update_software_request",
                        "configuration_request", "accept_without_testing_request",
                        "reset_memory_request")])
    assert (values["measurementPeriodBase"], values["measurementPeriodFactor"]) == (60, 5)
    assert all(values[k] is True for k in ("deviceInfoRequest", "updateSoftwareRequest",
                                           "configurationRequest",
                                           "acceptWithoutTestingRequest",
                                           "resetMemoryRequest"))


def test_configuration_modem_network_token_and_endpoints(reader):
    """_parsesModemAndNetworkFields, _parsesCloudTokenFields, _parsesEndpointFields."""
    values = config(reader, wire.text(C["apn"], "internet.example.com"),
                    wire.text(C["apn_username"], "user"), wire.text(C["apn_password"], "pass"),
                    wire.uint(C["plmn_selection"], 26001), wire.uint(C["modem_bands_mask"], 2084),
                    wire.uint(C["network_troubleshooting"], 2),
                    wire.text(C["cloud_token"], "my-device-token"),
                    wire.uint(C["cloud_token_config"], 1),
                    wire.uint(C["cloud_token_coap_option"], 65000),
                    wire.text(C["data_endpoint"], "/m"),
                    wire.text(C["configuration_endpoint"], "/c"),
                    wire.text(C["device_info_endpoint"], "/i"),
                    wire.text(C["time_endpoint"], "/t"))
    assert {k: values[k] for k in (
        "apn", "apnUsername", "apnPassword", "plmnSelection", "modemBandsMask",
        "networkTroubleshooting", "cloudToken", "cloudTokenConfig", "cloudTokenCoapOption",
        "dataEndpoint", "configurationEndpoint", "deviceInfoEndpoint", "timeEndpoint")} == {
        "apn": "internet.example.com", "apnUsername": "user", "apnPassword": "pass",
        "plmnSelection": 26001, "modemBandsMask": 2084, "networkTroubleshooting": 2,
        "cloudToken": "my-device-token", "cloudTokenConfig": 1, "cloudTokenCoapOption": 65000,
        "dataEndpoint": "/m", "configurationEndpoint": "/c", "deviceInfoEndpoint": "/i",
        "timeEndpoint": "/t"}


def test_configuration_nested_and_repeated(reader):
    """_parsesBleAdvertisingPeriod, _parsesRepeatedChannelTypes, _parsesEdgeLogicRules."""
    ble = wire.uint(1, 2) + wire.uint(2, 1600) + wire.uint(3, 320)
    rule = wire.uint(1, 1) + wire.uint(2, 2) + wire.packed_sint(3, [500]) + wire.uint(4, 1)
    values = config(reader, wire.length(C["ble_advertising_period"], ble),
                    wire.packed_uint(C["channel_types"], [1, 2, 3]),
                    wire.length(C["rules"], rule))
    assert values["bleAdvertisingPeriod"] == {"mode": "BLE_ADVERTISING_PERIOD_MODE_NORMAL",
                                              "normal": 1600, "fast": 320}
    assert values["channelTypes"] == ["MEASUREMENT_TYPE_TEMPERATURE",
                                      "MEASUREMENT_TYPE_HUMIDITY",
                                      "MEASUREMENT_TYPE_ATMOSPHERIC_PRESSURE"]
    assert values["rules"] == [{"channelMask": 1, "condition": "CONDITION_HIGH_THRESHOLD",
                                "parameters": [500], "action": "ACTION_TRIGGER_TRANSMISSION"}]


def test_empty_configuration_has_every_field_with_its_default(reader):
    """getEfentoConfiguration_emptyConfigProducesJsonWithDefaultValues: every field of
    ProtoConfig but its message fields (set ones only), under its JSON name."""
    values = config(reader)
    assert (values["measurementPeriodBase"], values["transmissionInterval"],
            values["dataServerIp"], values["deviceInfoRequest"], values["cloudToken"]) == (
        0, 0, "", False, "")
    fields = reader.messages.ProtoConfig.DESCRIPTOR.fields
    assert set(values) == {f.json_name for f in fields if f.message_type is None or
                           f.is_repeated}
    assert len(fields) == 63 and len(values) == 60  # Efento's 63 fields, 3 of them messages


# == the device API in the core =============================================

SENSOR = Device("Efento 1", "efento")
OTHER = Device("Plain 1", "default")
PEER = ("10.0.0.7", 5683)
NOW = T + 0.25


def make_core():
    messages = protoc.efento_messages()
    json = JsonFormat()
    efento = EfentoFormat(messages)
    devices = {"efento-token": SENSOR, "plain-token": OTHER}
    return GatewayCore(core_config(), devices.get,
                       lambda device_type: efento if device_type == "efento" else json,
                       efento=messages)


def efento(ref, resource, payload=b"", method=codes.POST):
    return Request(ref, method, ("efento", resource), payload, remote=PEER)


def one_measurement(token="efento-token"):
    return wire.measurements([wire.channel("TEMPERATURE", T, [223])], token=token)


def stored(core, actions):
    [store] = [a for a in actions if type(a) is Store]
    return store, core.on_stored([(store.ref, 1)], NOW)


def test_a_measurement_is_stored_then_answered_2_01_to_a_con_request_only():
    """2.01 once stored, marked quiet: the transport sends it to a CON request, none to a
    NON one (tests/coap/test_datagram_quiet.py)."""
    core = make_core()
    actions = core.on_request(efento(1, "m", one_measurement()), NOW)
    assert actions[0] == Authenticated(1)
    assert not [a for a in actions if type(a) is Reply]  # not before it is stored
    store, after = stored(core, actions)
    assert store.entry.device == "Efento 1" and store.entry.topic == "v1/gateway/telemetry"
    assert [a for a in after if type(a) is Reply] == [Reply(1, codes.CREATED, quiet=True)]


def test_device_info_and_configuration_become_telemetry_and_attributes():
    core = make_core()
    store, _ = stored(core, core.on_request(efento(1, "i", wire.device_info(
        token="efento-token")), NOW))
    assert store.entry.topic == "v1/gateway/telemetry"
    assert b'"ts":%d' % int(NOW * 1000) in store.entry.payload
    store, _ = stored(core, core.on_request(efento(2, "c", wire.text(24, "efento-token")),
                                            NOW))
    assert store.entry.topic == "v1/gateway/attributes"
    assert b'"cloudToken":"efento-token"' in store.entry.payload


@pytest.mark.parametrize("request_, code", [
    (efento(1, "m", b"\x0a\xff"), codes.INTERNAL_SERVER_ERROR),  # does not decode
    (efento(1, "m", one_measurement("nobody")), codes.UNAUTHORIZED),
    (efento(1, "m", one_measurement("")), codes.UNAUTHORIZED),
    (efento(1, "m", one_measurement("plain-token")), codes.BAD_REQUEST),  # not EFENTO
    (efento(1, "m", wire.measurements([], token="efento-token")), codes.BAD_REQUEST),
    (efento(1, "x", one_measurement()), codes.BAD_REQUEST),  # ThingsBoard: 4.00
    (Request(1, codes.POST, ("efento",), one_measurement(), remote=PEER), codes.BAD_REQUEST),
    (efento(1, "m", method=codes.GET), codes.BAD_REQUEST),
    (efento(1, "t", method=codes.POST), codes.BAD_REQUEST),
    (efento(1, "m", one_measurement(), method=codes.PUT), codes.METHOD_NOT_ALLOWED),
])
def test_errors_are_answered_as_thingsboard_does(request_, code):
    replies = [a for a in make_core().on_request(request_, NOW) if type(a) is Reply]
    assert [r.code for r in replies] == [code]


def test_errors_are_answered_to_non_requests_too():
    actions = make_core().on_request(efento(1, "m", one_measurement("plain-token")), NOW)
    assert [(a.code, a.quiet) for a in actions if type(a) is Reply] == [
        (codes.BAD_REQUEST, False)]


def test_time_is_4_bytes_of_epoch_seconds_big_endian():
    [reply] = make_core().on_request(efento(1, "t", method=codes.GET), NOW)
    assert reply == Reply(1, codes.CONTENT, T.to_bytes(4, "big"))
    assert mapping.epoch_seconds(2 ** 32 + 5.5) == b"\x00\x00\x00\x05"  # Java's int cast


def test_an_efento_device_on_api_v1_gets_4_00_as_thingsboard_gives():
    core = make_core()
    request = Request(1, codes.GET, ("api", "v1", "efento-token", "attributes"), observe=0,
                      remote=PEER)
    assert [a.code for a in core.on_request(request, NOW) if type(a) is Reply] == [
        codes.BAD_REQUEST]
    [reply] = core.on_uplinks([(2, "efento-token", "telemetry", b'{"t": 1}', PEER)], NOW)
    assert reply.code == codes.BAD_REQUEST


def test_without_protoc_the_resources_say_why():
    core = GatewayCore(core_config(), {}.get)
    [reply] = [a for a in core.on_request(efento(1, "m", one_measurement()), NOW)
               if type(a) is Reply]
    assert reply.code == codes.SERVICE_UNAVAILABLE and b"protoc" in reply.payload
