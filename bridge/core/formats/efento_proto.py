"""Efento's NB-IoT sensor messages (the protocol ThingsBoard's ``/efento`` resources read).

Efento's sensors post three Protocol Buffers messages: measurements (``ProtoMeasurements``,
to ``/efento/m``), device information (``ProtoDeviceInfo``, ``/efento/i``) and their
configuration (``ProtoConfig``, ``/efento/c``). The text below is our own writing of
Efento's published message layout: the field names, numbers and types are Efento's (the
wire format depends on them; ThingsBoard's copies are under
``common/transport/coap/src/main/proto/efento/``), gathered into one file of package
``efento`` with no imports or options, so that ``protoc`` compiles it at start like every
other schema (``bridge/edge/protoc.py`` ``efento_messages``) and its classes live in a
pool of their own. Efento's reserved field numbers are left out (reserved is a rule of
the writer, not of the reader). Print the text to a file to build test payloads:
``python -c "from bridge.core.formats import efento_proto as e; print(e.PROTO)"``.

Why compiled at start and not shipped as generated ``_pb2`` modules: generated code is
tied to the protobuf runtime it was made for (the bridge runs protobuf 7 on CPython and
6.33 on PyPy), ThingsBoard's fixed messages already take this path, and the text stays
readable to whoever builds a sensor's payload.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = """syntax = "proto3";
package efento;

enum MeasurementType {
  MEASUREMENT_TYPE_NO_SENSOR = 0;
  MEASUREMENT_TYPE_TEMPERATURE = 1;
  MEASUREMENT_TYPE_HUMIDITY = 2;
  MEASUREMENT_TYPE_ATMOSPHERIC_PRESSURE = 3;
  MEASUREMENT_TYPE_DIFFERENTIAL_PRESSURE = 4;
  MEASUREMENT_TYPE_OK_ALARM = 5;
  MEASUREMENT_TYPE_IAQ = 6;
  MEASUREMENT_TYPE_FLOODING = 7;
  MEASUREMENT_TYPE_PULSE_CNT = 8;
  MEASUREMENT_TYPE_ELECTRICITY_METER = 9;
  MEASUREMENT_TYPE_WATER_METER = 10;
  MEASUREMENT_TYPE_SOIL_MOISTURE = 11;
  MEASUREMENT_TYPE_CO_GAS = 12;
  MEASUREMENT_TYPE_NO2_GAS = 13;
  MEASUREMENT_TYPE_H2S_GAS = 14;
  MEASUREMENT_TYPE_AMBIENT_LIGHT = 15;
  MEASUREMENT_TYPE_PM_1_0 = 16;
  MEASUREMENT_TYPE_PM_2_5 = 17;
  MEASUREMENT_TYPE_PM_10_0 = 18;
  MEASUREMENT_TYPE_NOISE_LEVEL = 19;
  MEASUREMENT_TYPE_NH3_GAS = 20;
  MEASUREMENT_TYPE_CH4_GAS = 21;
  MEASUREMENT_TYPE_HIGH_PRESSURE = 22;
  MEASUREMENT_TYPE_DISTANCE_MM = 23;
  MEASUREMENT_TYPE_WATER_METER_ACC_MINOR = 24;
  MEASUREMENT_TYPE_WATER_METER_ACC_MAJOR = 25;
  MEASUREMENT_TYPE_CO2_GAS = 26;
  MEASUREMENT_TYPE_HUMIDITY_ACCURATE = 27;
  MEASUREMENT_TYPE_STATIC_IAQ = 28;
  MEASUREMENT_TYPE_CO2_EQUIVALENT = 29;
  MEASUREMENT_TYPE_BREATH_VOC = 30;
  MEASUREMENT_TYPE_SHARED_MODEM = 31;
  MEASUREMENT_TYPE_PERCENTAGE = 32;
  MEASUREMENT_TYPE_VOLTAGE = 33;
  MEASUREMENT_TYPE_CURRENT = 34;
  MEASUREMENT_TYPE_PULSE_CNT_ACC_MINOR = 35;
  MEASUREMENT_TYPE_PULSE_CNT_ACC_MAJOR = 36;
  MEASUREMENT_TYPE_ELEC_METER_ACC_MINOR = 37;
  MEASUREMENT_TYPE_ELEC_METER_ACC_MAJOR = 38;
  MEASUREMENT_TYPE_PULSE_CNT_ACC_WIDE_MINOR = 39;
  MEASUREMENT_TYPE_PULSE_CNT_ACC_WIDE_MAJOR = 40;
  MEASUREMENT_TYPE_CURRENT_PRECISE = 41;
  MEASUREMENT_TYPE_OUTPUT_CONTROL = 42;
  MEASUREMENT_TYPE_RESISTANCE = 43;
}

// /efento/m: samples by channel, offsets from a start point (continuous sensors) or
// signed state changes (binary sensors)
message ProtoChannel {
  MeasurementType type = 1;
  int32 timestamp = 2;
  sint32 start_point = 4;
  repeated sint32 sample_offsets = 5;
}

message ProtoMeasurements {
  bytes serial_number = 1;
  bool battery_status = 2;
  uint32 measurement_period_base = 3;
  repeated ProtoChannel channels = 4;
  uint32 next_transmission_at = 5;
  uint32 transfer_reason = 6;
  uint32 signal = 7;
  uint32 measurement_period_factor = 8;
  uint32 configuration_hash = 9;
  string cloud_token = 16;
  uint32 extended_configuration_hash = 17;
  uint32 battery_level = 18;
}

// /efento/i
message ProtoRuntime {
  uint32 up_time = 1;
  repeated uint32 message_counters = 2;
  sint32 mcu_temperature = 3;
  uint32 battery_voltage = 4;
  sint32 min_battery_mcu_temperature = 5;
  uint32 battery_reset_timestamp = 6;
  sint32 max_mcu_temperature = 7;
  sint32 min_mcu_temperature = 8;
  repeated uint32 runtime_errors = 9;
  uint32 reset_counter = 10;
}

message ProtoUpdateInfo {
  uint32 timestamp = 1;
  uint32 status = 2;
}

enum ModemType {
  MODEM_TYPE_UNSPECIFIED = 0;
  MODEM_TYPE_BC66 = 1;
  MODEM_TYPE_BC66NA = 2;
  MODEM_TYPE_SHARED_MODEM = 3;
  MODEM_TYPE_BC660 = 4;
}

enum ModemFirmwareVersion {
  MODEM_FIRMWARE_VERSION_UNSPECIFIED = 0;
  MODEM_FIRMWARE_VERSION_READING_ERROR = 1;
  MODEM_FIRMWARE_VERSION_UNKNOWN = 2;
  MODEM_FIRMWARE_VERSION_BC660_V1 = 3;
  MODEM_FIRMWARE_VERSION_BC660_V2 = 4;
  MODEM_FIRMWARE_VERSION_BC660_V3 = 5;
  MODEM_FIRMWARE_VERSION_BC660_V4 = 6;
  MODEM_FIRMWARE_VERSION_BC660_V5 = 7;
  MODEM_FIRMWARE_VERSION_BC660_V6 = 8;
  MODEM_FIRMWARE_VERSION_BC660_V7 = 9;
  MODEM_FIRMWARE_VERSION_BC660_V8 = 10;
}

message ProtoModem {
  ModemType type = 1;
  repeated sint32 parameters = 2;
  string sim_card_identification = 3;
  ModemFirmwareVersion firmware_version = 4;
  string modem_identification = 5;
  repeated uint32 modem_statistics = 6;
}

message ProtoDeviceInfo {
  bytes serial_number = 1;
  uint32 sw_version = 3;
  ProtoRuntime runtime_info = 13;
  ProtoModem modem = 14;
  string commit_id = 15;
  string cloud_token = 16;
  repeated uint32 memory_statistics = 17;
  ProtoUpdateInfo last_update_info = 18;
  uint32 enclosure_tamper_alert = 19;
}

// /efento/c: the sensor's configuration, and the requests a server may send it
enum Condition {
  CONDITION_UNSPECIFIED = 0;
  CONDITION_DISABLED = 1;
  CONDITION_HIGH_THRESHOLD = 2;
  CONDITION_LOW_THRESHOLD = 3;
  CONDITION_DIFF_THRESHOLD = 4;
  CONDITION_BINARY_CHANGE_STATE = 5;
  CONDITION_LOGIC_OPERATOR = 6;
  CONDITION_ON_MEASUREMENT = 7;
  CONDITION_ON_SENSOR_ERROR = 8;
}

enum LogicOperator {
  LOGIC_OPERATOR_UNSPECIFIED = 0;
  LOGIC_OPERATOR_AND = 1;
  LOGIC_OPERATOR_OR = 2;
}

enum Action {
  ACTION_UNSPECIFIED = 0;
  ACTION_TRIGGER_TRANSMISSION = 1;
  ACTION_NO_ACTION = 2;
  ACTION_TRIGGER_TRANSMISSION_WITH_ACK = 3;
  ACTION_FAST_ADVERTISING_MODE = 4;
}

enum CalendarType {
  CALENDAR_TYPE_UNSPECIFIED = 0;
  CALENDAR_TYPE_DISABLED = 1;
  CALENDAR_TYPE_WEEK = 2;
}

message ProtoCalendar {
  uint32 rule_mask = 1;
  repeated sint32 parameters = 2;
  CalendarType type = 3;
}

message ProtoRule {
  uint32 channel_mask = 1;
  Condition condition = 2;
  repeated sint32 parameters = 3;
  Action action = 4;
}

message ProtoCalibrationParametersRequest {
  uint32 calibration_request = 1;
  uint32 channel_assignment = 2;
  repeated int32 parameters = 3;
}

message ProtoOutputControlState {
  uint32 channel_index = 1;
  uint32 channel_state = 2;
}

enum BleAdvertisingPeriodMode {
  BLE_ADVERTISING_PERIOD_MODE_UNSPECIFIED = 0;
  BLE_ADVERTISING_PERIOD_MODE_DEFAULT = 1;
  BLE_ADVERTISING_PERIOD_MODE_NORMAL = 2;
  BLE_ADVERTISING_PERIOD_MODE_FAST = 3;
}

message ProtoBleAdvertisingPeriod {
  BleAdvertisingPeriodMode mode = 1;
  uint32 normal = 2;
  uint32 fast = 3;
}

enum AdvertisementManufacturerDataFormat {
  ADVERTISEMENT_MANUFACTURER_DATA_FORMAT_UNSPECIFIED = 0;
  ADVERTISEMENT_MANUFACTURER_DATA_FORMAT_V3 = 1;
  ADVERTISEMENT_MANUFACTURER_DATA_FORMAT_V5 = 2;
}

message ProtoNetworkSearch {
  repeated uint32 time_schema_last_registration_ok = 1;
  repeated uint32 time_schema_last_registration_not_ok = 2;
  uint32 disable_period_base = 3;
  uint32 counter_max = 4;
}

// In Efento's order (the attributes' JSON follows it)
message ProtoConfig {
  bytes serial_number = 25;
  sint32 payload_split_info = 44;
  uint32 configuration_hash = 21;
  uint32 configuration_hash_timestamp = 39;
  repeated uint32 configuration_errors = 20;
  uint32 configuration_error_timestamp = 38;
  repeated MeasurementType channel_types = 27;
  uint32 nvm_status = 62;
  uint32 current_time = 8;
  bool accept_without_testing_request = 22;
  bool configuration_request = 19;
  bool device_info_request = 6;
  bool extended_configuration_request = 63;
  bool update_software_request = 7;
  bool clear_runtime_errors_request = 37;
  uint32 disable_modem_request = 18;
  string update_modem_request = 45;
  bool reset_memory_request = 30;
  bool restart_memory_stats_request = 64;
  uint32 data_transfer_start_timestamp_request = 65;
  ProtoCalibrationParametersRequest calibration_parameters_request = 49;
  repeated ProtoOutputControlState set_output_control_state_request = 58;
  uint32 measurement_period_base = 2;
  uint32 measurement_period_factor = 26;
  uint32 ble_turnoff_time = 4;
  uint32 ble_tx_power_level = 36;
  bytes encryption_key = 54;
  ProtoBleAdvertisingPeriod ble_advertising_period = 59;
  AdvertisementManufacturerDataFormat advertisement_manufacturer_data_format = 60;
  repeated ProtoRule rules = 28;
  repeated ProtoCalendar calendars = 47;
  uint32 transmission_interval = 3;
  uint32 ack_interval = 5;
  uint32 transfer_limit = 9;
  uint32 transfer_limit_timer = 10;
  uint32 supervision_period = 29;
  string data_server_ip = 11;
  uint32 data_server_port = 12;
  string data_endpoint = 32;
  string configuration_endpoint = 33;
  string extended_configuration_endpoint = 61;
  string device_info_endpoint = 34;
  string time_endpoint = 35;
  string update_server_ip = 13;
  uint32 update_server_port_udp = 14;
  uint32 update_server_port_coap = 15;
  uint32 cloud_token_config = 23;
  string cloud_token = 24;
  uint32 cloud_token_coap_option = 40;
  uint32 payload_signature_coap_option = 41;
  uint32 modem_identification_coap_option = 52;
  repeated uint32 dns_server_ip = 42;
  uint32 dns_ttl_config = 43;
  uint32 network_troubleshooting = 51;
  bytes network_key = 53;
  string apn = 16;
  string apn_username = 55;
  string apn_password = 56;
  uint32 plmn_selection = 17;
  uint32 modem_bands_mask = 31;
  repeated uint32 cellular_config_params = 46;
  ProtoNetworkSearch network_search = 57;
  repeated uint32 led_config = 50;
}
"""

KIND = "fixed"  # for protoc.compile_schema: ThingsBoard's general rules, no profile shape
FILE_NAME = "efento/efento.proto"


class EfentoMessages:
    """The classes of Efento's three messages and what they hold, from the compiled file."""

    ProtoMeasurements: Any
    ProtoDeviceInfo: Any
    ProtoConfig: Any

    def __init__(self, compiled: descriptor_pb2.FileDescriptorProto):
        file = descriptor_pb2.FileDescriptorProto()
        file.CopyFrom(compiled)
        file.name = FILE_NAME
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        for name in ("ProtoMeasurements", "ProtoDeviceInfo", "ProtoConfig"):
            setattr(self, name, message_factory.GetMessageClass(
                pool.FindMessageTypeByName("efento." + name)))
        self.measurement_types = _names(pool, "efento.MeasurementType")
        self.modem_types = _names(pool, "efento.ModemType")
        self.firmware_versions = _names(pool, "efento.ModemFirmwareVersion")


def _names(pool: Any, enum: str) -> dict:
    """Number -> name of an enum's values."""
    return {number: value.name
            for number, value in pool.FindEnumTypeByName(enum).values_by_number.items()}
