"""Efento sensor messages written byte by byte, from Efento's published field numbers and
types, with no .proto and no protobuf library: payloads built independently of the
bridge's decoder and of its .proto text (a wrong field number or type there fails the
tests that send these).

Field numbers (Efento's message layout, also in ThingsBoard's copies under
``common/transport/coap/src/main/proto/efento/``):

* ProtoMeasurements: 1 serial_number bytes, 2 battery_status bool, 3
  measurement_period_base uint32, 4 channels ProtoChannel, 5 next_transmission_at uint32,
  6 transfer_reason uint32, 7 signal uint32, 8 measurement_period_factor uint32,
  9 configuration_hash uint32, 16 cloud_token string
* ProtoChannel: 1 type enum, 2 timestamp int32, 4 start_point sint32, 5 sample_offsets
  repeated sint32 (packed)
* ProtoDeviceInfo: 1 serial_number, 3 sw_version uint32, 13 runtime_info ProtoRuntime,
  14 modem ProtoModem, 16 cloud_token, 17 memory_statistics repeated uint32
* ProtoRuntime: 1 up_time, 2 message_counters repeated uint32, 3 mcu_temperature sint32,
  4 battery_voltage uint32, 5 min_battery_mcu_temperature sint32, 6
  battery_reset_timestamp uint32, 7 max_mcu_temperature sint32, 8 min_mcu_temperature
  sint32, 9 runtime_errors repeated uint32
* ProtoModem: 1 type enum, 2 parameters repeated sint32, 3 sim_card_identification string,
  4 firmware_version enum, 5 modem_identification string, 6 modem_statistics repeated uint32
* ProtoConfig: see ``CONFIG``
"""

from __future__ import annotations

import struct
from typing import Iterable, List, Sequence


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/enum negatives: ten bytes, two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 31) if value < 0 else value << 1


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def uint(number: int, value: int) -> bytes:
    """uint32, int32, bool and enum fields (proto3: a zero is not written)."""
    return key(number, 0) + varint(int(value)) if value else b""


def sint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(zigzag(value)) if value else b""


def length(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def text(number: int, value: str) -> bytes:
    return length(number, value.encode("utf-8")) if value else b""


def packed_uint(number: int, values: Iterable[int]) -> bytes:
    data = b"".join(varint(v) for v in values)
    return length(number, data) if data else b""


def packed_sint(number: int, values: Iterable[int]) -> bytes:
    data = b"".join(varint(zigzag(v)) for v in values)
    return length(number, data) if data else b""


def serial(value: int) -> bytes:
    """ThingsBoard's tests' serial number: the integer as 4 big-endian bytes."""
    return struct.pack(">i", value)


# MeasurementType numbers (Efento's enum)
TYPES = {"NO_SENSOR": 0, "TEMPERATURE": 1, "HUMIDITY": 2, "ATMOSPHERIC_PRESSURE": 3,
         "DIFFERENTIAL_PRESSURE": 4, "OK_ALARM": 5, "IAQ": 6, "FLOODING": 7, "PULSE_CNT": 8,
         "ELECTRICITY_METER": 9, "WATER_METER": 10, "SOIL_MOISTURE": 11, "CO_GAS": 12,
         "AMBIENT_LIGHT": 15, "HIGH_PRESSURE": 22, "DISTANCE_MM": 23,
         "WATER_METER_ACC_MINOR": 24, "WATER_METER_ACC_MAJOR": 25, "CO2_GAS": 26,
         "HUMIDITY_ACCURATE": 27, "STATIC_IAQ": 28, "CO2_EQUIVALENT": 29, "BREATH_VOC": 30,
         "PERCENTAGE": 32, "VOLTAGE": 33, "CURRENT": 34, "PULSE_CNT_ACC_MINOR": 35,
         "PULSE_CNT_ACC_MAJOR": 36, "ELEC_METER_ACC_MINOR": 37, "ELEC_METER_ACC_MAJOR": 38,
         "PULSE_CNT_ACC_WIDE_MINOR": 39, "PULSE_CNT_ACC_WIDE_MAJOR": 40,
         "CURRENT_PRECISE": 41, "OUTPUT_CONTROL": 42}


def channel(kind: str, timestamp: int, offsets: Sequence[int], start_point: int = 0) -> bytes:
    return (uint(1, TYPES[kind]) + uint(2, timestamp) + sint(4, start_point)
            + packed_sint(5, offsets))


def measurements(channels: List[bytes], token: str = "test_token", serial_number: int = 1234,
                 period_base: int = 180, period_factor: int = 0, battery: bool = True,
                 signal: int = 0, next_transmission_at: int = 1000) -> bytes:
    """ThingsBoard's tests' ProtoMeasurements (their defaults)."""
    return (length(1, serial(serial_number)) + uint(2, battery) + uint(3, period_base)
            + b"".join(length(4, c) for c in channels) + uint(5, next_transmission_at)
            + uint(7, signal) + uint(8, period_factor) + text(16, token))


MODEM_TYPES = {"UNSPECIFIED": 0, "BC66": 1, "BC66NA": 2, "SHARED_MODEM": 3, "BC660": 4}
FIRMWARE_VERSIONS = {"UNSPECIFIED": 0, "READING_ERROR": 1, "BC660_V2": 4}


def modem(kind: str, parameters: Sequence[int], sim: str = "", firmware: str = "UNSPECIFIED",
          identification: str = "", statistics: Sequence[int] = ()) -> bytes:
    return (uint(1, MODEM_TYPES[kind]) + packed_sint(2, parameters) + text(3, sim)
            + uint(4, FIRMWARE_VERSIONS[firmware]) + text(5, identification)
            + packed_uint(6, statistics))


def runtime(up_time: int = 0, counters: Sequence[int] = (0, 0, 0), mcu: int = 0,
            battery_voltage: int = 0, min_battery_mcu: int = 0, battery_reset: int = 0,
            max_mcu: int = 0, min_mcu: int = 0, errors: Sequence[int] = ()) -> bytes:
    return (uint(1, up_time) + packed_uint(2, counters) + sint(3, mcu) + uint(4, battery_voltage)
            + sint(5, min_battery_mcu) + uint(6, battery_reset) + sint(7, max_mcu)
            + sint(8, min_mcu) + packed_uint(9, errors))


def device_info(memory: Sequence[int] = (0,) * 22, modem_message: bytes = b"",
                runtime_message: bytes = b"", sw_version: int = 0,
                token: str = "test_token") -> bytes:
    """ThingsBoard's tests' minimal device info: 22 memory statistics, a BC66-class modem of
    34 parameters, three message counters (all 0) unless given."""
    if not modem_message:
        modem_message = modem("UNSPECIFIED", [0] * 34)
    if not runtime_message:
        runtime_message = runtime()
    return (length(1, serial(1234)) + uint(3, sw_version) + length(13, runtime_message)
            + length(14, modem_message) + text(16, token) + packed_uint(17, memory))


# ProtoConfig field numbers used by the tests
CONFIG = {"measurement_period_base": 2, "transmission_interval": 3, "ack_interval": 5,
          "device_info_request": 6, "update_software_request": 7, "data_server_ip": 11,
          "data_server_port": 12, "update_server_ip": 13, "update_server_port_udp": 14,
          "update_server_port_coap": 15, "apn": 16, "plmn_selection": 17,
          "configuration_request": 19, "accept_without_testing_request": 22,
          "cloud_token_config": 23, "cloud_token": 24, "measurement_period_factor": 26,
          "channel_types": 27, "rules": 28, "supervision_period": 29,
          "reset_memory_request": 30, "modem_bands_mask": 31, "data_endpoint": 32,
          "configuration_endpoint": 33, "device_info_endpoint": 34, "time_endpoint": 35,
          "cloud_token_coap_option": 40, "network_troubleshooting": 51, "apn_username": 55,
          "apn_password": 56, "ble_advertising_period": 59}
