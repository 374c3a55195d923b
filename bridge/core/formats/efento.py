"""Efento NB-IoT sensors' messages as ThingsBoard's CoAP transport maps them to the platform.

ThingsBoard serves Efento's sensors natively (``CoapEfentoTransportResource``): a device
profile with ``coapDeviceType: EFENTO``, its sensors posting Protocol Buffers messages
(``efento_proto``) to ``/efento/m`` (measurements), ``/efento/i`` (device information) and
``/efento/c`` (configuration). This module is that mapping, message in, gateway message
out, with no I/O; the device API around it is ``core/efento.py``.

Measurements -> telemetry, one entry per timestamp, in time order:

* at the first channel's timestamp: ``serial`` (the serial number's bytes in upper-case
  hex), ``battery`` (``ok``/``low``), ``next_transmission_at`` (``yyyy-MM-dd HH:mm:ss UTC``)
  and ``signal``;
* at each channel's timestamp: ``measurement_interval_<n>`` (seconds: the period base
  times the factor; a factor of 0 means 14 for binary sensors, 1 for the others);
* continuous sensors: sample ``i`` at the channel's timestamp plus ``i`` periods, its value
  ``start_point + offset`` scaled per type (``temperature_<n>`` in tenths of a degree,
  ``humidity_<n>``, ``pressure_<n>``...); an offset in [8355840, 8388607] is a sensor error
  and gives no value; the air-quality types give ``<key>_<n>`` and ``<key>_metadata_<n>``
  (value divided and its remainder by 3); the accumulating counters' minor channel
  names its major channel (value modulo 6, plus 1), and with the major value at the same
  timestamp gives ``<prefix>total_<n>`` = major x resolution + minor, the major's own key
  then dropped;
* binary sensors (OK/alarm, flooding, output control): the absolute value of an offset
  less one is the seconds after the channel's timestamp; a negative offset is the "ok"
  state; the states are read until one repeats the one before.

Device information -> one telemetry entry at the time of receipt: software version,
memory statistics, modem (its type's parameter names), runtime information; Efento's
"undefined" times (4294967295) read ``Undefined``, other times ``dd MMM yyyy HH:mm:ss
+0000`` (UTC). Configuration -> client attributes: the message printed as ThingsBoard's
JSON printer does (``protojson``: lowerCamelCase names, every field with its default).

Where this differs from ThingsBoard: times are printed in UTC (ThingsBoard uses its
JVM's zone); 32-bit unsigned values above 2**31 stay positive and counter totals do not
wrap (ThingsBoard computes both in Java ``int``); a device information message with fewer
memory statistics, message counters or modem parameters than ThingsBoard reads is
stored with what it has (ThingsBoard answers 5.00 to it).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence, Tuple

from .. import codes, gateway
from ..payloads import TelemetryEntry, Values
from . import DEFAULT_PAYLOAD_TYPE, BuildContext, Message, PayloadFormatEntry
from .efento_proto import EfentoMessages
from .protojson import to_json

NAME = "efento"
SENSOR_ERROR = (8355840, 8388607)  # sample offsets in this range are error codes
UNDEFINED_TIME = (4294967295, -1)  # Efento's "no time" (uint32 max; -1 as Java reads it)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")

# binary sensors: measurement type number -> (key, its text for a positive offset, negative)
BINARY = {5: ("ok_alarm_", "ALARM", "OK"), 7: ("flooding_", "WATER_DETECTED", "OK"),
          42: ("output_control_", "ON", "OFF")}
# continuous sensors: type number -> (key, divisor): the value (start + offset) / divisor,
# a double as ThingsBoard writes it
SCALED = {1: ("temperature_", 10), 2: ("humidity_", 1), 3: ("pressure_", 10),
          4: ("pressure_diff_", 1), 8: ("pulse_cnt_", 1), 9: ("watt_hour_", 1),
          10: ("pulse_counter_water_", 1), 11: ("soil_moisture_", 1),
          15: ("ambient_light_", 10), 22: ("high_pressure_", 1), 23: ("distance_mm_", 1),
          27: ("humidity_relative_", 10), 32: ("percentage_", 100), 33: ("voltage_", 10),
          34: ("current_", 100), 41: ("current_precise_", 1000)}
# type -> (key, factor): value / factor (an integer) and its remainder as metadata
WITH_METADATA = {6: ("iaq_", 3), 28: ("static_iaq_", 3), 26: ("co2_gas_", 3),
                 29: ("co2_", 3), 30: ("breath_voc_", 3), 25: ("water_cnt_acc_", 4),
                 36: ("pulse_cnt_acc_", 4), 38: ("elec_meter_acc_", 4),
                 40: ("pulse_cnt_acc_wide_", 4)}
# accumulating counters' minor channels: type -> (prefix, factor, the major's resolution)
MINOR = {24: ("water_cnt_acc_", 6, 100), 35: ("pulse_cnt_acc_", 6, 1000),
         37: ("elec_meter_acc_", 6, 1000), 39: ("pulse_cnt_acc_wide_", 6, 1000000)}

MEMORY_STATISTICS = (
    "nv_storage_status", "*timestamp_of_the_end_of_collecting_statistics",
    "capacity_of_memory_in_bytes", "used_space_in_bytes", "size_of_invalid_packets_in_bytes",
    "size_of_corrupted_packets_in_bytes", "number_of_valid_packets",
    "number_of_invalid_packets", "number_of_corrupted_packets") + tuple(
    "number_of_all_samples_for_channel_%d" % n for n in range(1, 7)) + (
    "*timestamp_of_the_first_binary_measurement", "*timestamp_of_the_last_binary_measurement",
    "*timestamp_of_the_first_binary_measurement_sent",
    "*timestamp_of_the_first_continuous_measurement",
    "*timestamp_of_the_last_continuous_measurement",
    "*timestamp_of_the_last_continuous_measurement_sent", "nvm_write_counter")  # * a time
MODEM_STATISTICS = ("modem_transmissions_count", "modem_time_since_last_devinfo",
                    "modem_total_psm_time", "modem_total_active_time")
MESSAGE_COUNTERS = ("counter_of_confirmable_messages_attempts",
                    "counter_of_non_confirmable_messages_attempts",
                    "counter_of_succeeded_messages")
_CELL = ("sc_PCI", "sc_Cell_id", "sc_RSRP", "sc_RSRQ", "sc_RSSI", "sc_SINR", "sc_Band",
         "sc_TAC", "sc_ECL", "sc_TX_PWR", "op_mode", "nc_EARFCN")
# modem type number -> the names of its parameters, in order (others: the BC66's)
MODEM_PARAMETERS = {
    4: ("sc_EARFCN", "sc_EARNFCN_offset") + _CELL + (
        "nc_PCI", "nc_RSRP", "nc_RSRQ", "sleep_duration", "rx_time", "tx_time", "PLMN_state",
        "select_PLMN"),
    3: ("RSRP", "RSRQ", "RSSI", "SINR"),
}
BC66_PARAMETERS = ("sc_EARNFCN_offset", "sc_EARFCN") + _CELL + (
    "nc_EARNFCN_offset", "nc_PCI", "nc_RSRP", "RLC_UL_BLER", "RLC_DL_BLER", "MAC_UL_BLER",
    "MAC_DL_BLER", "MAC_UL_TOTAL_BYTES", "MAC_DL_TOTAL_BYTES", "MAC_UL_total_HARQ_Tx",
    "MAC_DL_total_HARQ_Tx", "MAC_UL_HARQ_re_Tx", "MAC_DL_HARQ_re_Tx", "RLC_UL_tput",
    "RLC_DL_tput", "MAC_UL_tput", "MAC_DL_tput", "sleep_duration", "rx_time", "tx_time")


def java_div(a: int, b: int) -> int:
    """``a / b`` on Java integers: the quotient truncated towards zero."""
    quotient = abs(a) // b
    return quotient if a >= 0 else -quotient


def java_mod(a: int, b: int) -> int:
    """``a % b`` on Java integers: the sign of the remainder is the dividend's."""
    return a - b * java_div(a, b)


def utc_time(seconds: int) -> str:
    """``next_transmission_at``'s form: ``2023-11-14 22:13:20 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def device_time(seconds: int) -> str:
    """A time of the device information: ``14 Nov 2023 22:13:20 +0000``, or ``Undefined``."""
    if seconds in UNDEFINED_TIME:
        return "Undefined"
    t = time.gmtime(seconds)
    return "%02d %s %04d %02d:%02d:%02d +0000" % (t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year,
                                                  t.tm_hour, t.tm_min, t.tm_sec)


def is_sensor_error(offset: int) -> bool:
    return SENSOR_ERROR[0] <= offset <= SENSOR_ERROR[1]


# == measurements ===========================================================

def measurements(msg: Any) -> List[TelemetryEntry]:
    """The telemetry entries of a ``ProtoMeasurements`` (4.00 when it has no channel)."""
    channels = msg.channels
    if not channels:
        raise codes.BadRequest("efento measurements: the message has no channels")
    by_ts: Dict[int, Values] = {channels[0].timestamp * 1000: {
        "serial": msg.serial_number.hex().upper(),
        "battery": "ok" if msg.battery_status else "low",
        "next_transmission_at": utc_time(msg.next_transmission_at),
        "signal": msg.signal}}
    for number, channel in enumerate(channels, 1):
        offsets = channel.sample_offsets
        if not offsets:
            continue
        binary = BINARY.get(channel.type)
        factor = msg.measurement_period_factor or (14 if binary else 1)
        period = msg.measurement_period_base * factor
        start = channel.timestamp * 1000
        by_ts.setdefault(start, {})["measurement_interval_%d" % number] = period
        if binary is not None:
            _binary_samples(by_ts, binary, number, start, offsets)
        else:
            for i, offset in enumerate(offsets):
                if not is_sensor_error(offset):
                    _continuous(by_ts.setdefault(start + i * period * 1000, {}),
                                channel.type, number, channel.start_point + offset)
    return [TelemetryEntry(ts, values) for ts, values in sorted(by_ts.items()) if values]


def _binary_samples(by_ts: Dict[int, Values], binary: Tuple[str, str, str], number: int,
                    start: int, offsets: Sequence[int]) -> None:
    key, positive, negative = binary
    for i, offset in enumerate(offsets):
        if is_sensor_error(offset):
            continue
        ok = offset < 0
        if i > 0 and ok == (offsets[i - 1] < 0):
            break  # ThingsBoard reads the changes of state up to the first repeated one
        by_ts.setdefault(start + abs(offset) * 1000 - 1000, {})[key + str(number)] = \
            negative if ok else positive


def _continuous(values: Values, kind: int, number: int, value: int) -> None:
    scaled = SCALED.get(kind)
    if scaled is not None:
        values[scaled[0] + str(number)] = value / scaled[1]
        return
    metadata = WITH_METADATA.get(kind)
    if metadata is not None:
        prefix, factor = metadata
        values[prefix + str(number)] = java_div(value, factor)
        values[prefix + "metadata_" + str(number)] = java_mod(value, factor)
        return
    minor = MINOR.get(kind)
    if minor is not None:
        prefix, factor, resolution = minor
        major_key = prefix + str(java_mod(value, factor) + 1)
        major = values.pop(major_key, None)
        if major is not None:
            values[prefix + "total_" + str(number)] = major * resolution + java_div(value,
                                                                                    factor)
    # other types (gases, particles, noise, resistance...): ThingsBoard ignores them


# == device information =====================================================

def _items(values: Values, names: Sequence[str], items: Sequence[int]) -> None:
    for name, value in zip(names, items):
        if name.startswith("*"):
            values[name[1:]] = device_time(value)
        else:
            values[name] = value


def device_info(msg: Any, messages: EfentoMessages) -> Values:
    """The telemetry values of a ``ProtoDeviceInfo``."""
    values: Values = {"sw_version": msg.sw_version}
    _items(values, MEMORY_STATISTICS, msg.memory_statistics)
    modem = msg.modem
    values["modem_types"] = messages.modem_types.get(modem.type, "UNRECOGNIZED")
    values["sim_card_identification"] = modem.sim_card_identification
    values["firmware_version"] = messages.firmware_versions.get(modem.firmware_version,
                                                                "UNRECOGNIZED")
    values["modem_identification"] = modem.modem_identification
    if len(modem.modem_statistics) >= len(MODEM_STATISTICS):
        _items(values, MODEM_STATISTICS, modem.modem_statistics)
    _items(values, MODEM_PARAMETERS.get(modem.type, BC66_PARAMETERS), modem.parameters)
    runtime = msg.runtime_info
    values["battery_reset_timestamp"] = device_time(runtime.battery_reset_timestamp)
    values["max_mcu_temp"] = runtime.max_mcu_temperature
    values["mcu_temp"] = runtime.mcu_temperature
    _items(values, MESSAGE_COUNTERS, runtime.message_counters)
    values["min_battery_mcu_temp"] = runtime.min_battery_mcu_temperature
    values["min_battery_voltage"] = runtime.battery_voltage
    values["min_mcu_temp"] = runtime.min_mcu_temperature
    values["runtime_errors"] = len(runtime.runtime_errors)
    values["up_time"] = runtime.up_time
    return values


# == the format of an EFENTO device type ====================================

class EfentoFormat:
    """The payload format of an EFENTO device type: its three messages, read as above.
    ThingsBoard refuses an EFENTO profile's device on ``/api/v1`` (4.00): so does every
    method of the ``PayloadFormat`` interface here."""

    name = NAME
    content_format = codes.OCTET_STREAM

    def __init__(self, messages: EfentoMessages):
        self.messages = messages

    def decode(self, kind: str, payload: bytes) -> Any:
        """``payload`` as Efento's message ``kind`` (5.00 when it does not decode, as
        ThingsBoard answers)."""
        cls = getattr(self.messages, kind)
        try:
            return cls.FromString(payload)
        except Exception as exc:  # DecodeError, and what the pure-Python parser raises
            raise codes.InternalServerError("efento: payload does not decode as %s: %s"
                                      % (cls.DESCRIPTOR.name, exc))

    def measurements_message(self, device: str, msg: Any) -> Message:
        return gateway.telemetry(device, measurements(msg))

    def device_info_message(self, device: str, msg: Any, now: float) -> Message:
        return gateway.telemetry(device, [TelemetryEntry(int(now * 1000),
                                                         device_info(msg, self.messages))])

    def configuration_values(self, msg: Any) -> Values:
        return to_json(msg)

    # == /api/v1: refused ===================================================

    def _refuse(self, *args: Any) -> Any:
        raise codes.BadRequest("the device's profile is EFENTO: it posts to /efento/m, "
                               "/efento/i and /efento/c, not /api/v1")

    telemetry = attributes = claim = rpc_reply = rpc_call = _refuse
    attribute_update = attributes_response = server_rpc = rpc_result = _refuse


def epoch_seconds(now: float) -> bytes:
    """``GET /efento/t``'s answer: the time as 4 bytes, big-endian epoch seconds (the low 32
    bits, as Java's ``(int)`` cast and ``putInt`` write it)."""
    return (int(now) & 0xFFFFFFFF).to_bytes(4, "big")



# == the registry's entry (``registry``): coapDeviceType EFENTO ============

def check_profile(profile: Any, where: str) -> List[str]:
    if profile.transportPayloadType != DEFAULT_PAYLOAD_TYPE:
        return ["%stransportPayloadType: an EFENTO profile has none (its sensors send "
                "Efento's own messages)" % where]
    return []


def build(profile: Any, context: BuildContext) -> EfentoFormat:
    return EfentoFormat(context.compiler.efento_messages())


FORMAT = PayloadFormatEntry(NAME, build, device_type="EFENTO", check=check_profile,
                            startup="bridge.edge.protoc:efento_startup")
