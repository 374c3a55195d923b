"""Tests of device payload parsing (bridge.core.payloads)."""

import pytest

from bridge.core import codes
from bridge.core.codes import BadRequest
from bridge.core.payloads import (Claim, TelemetryEntry, dumps, parse_attributes, parse_claim,
                                  parse_telemetry, split_query)

NOW_MS = 1_700_000_000_500


def assert_bad_request(call, *args):
    with pytest.raises(BadRequest) as info:
        call(*args)
    assert codes.dotted(info.value.code) == "4.00"
    return info.value


# -- telemetry: accepted shapes ---------------------------------------------

def test_flat_object_gets_receipt_ts():
    assert parse_telemetry(b'{"temperature": 21.5, "on": true}', NOW_MS) == [
        TelemetryEntry(NOW_MS, {"temperature": 21.5, "on": True})]


def test_array_of_objects_gives_one_entry_each_with_receipt_ts():
    assert parse_telemetry(b'[{"a": 1}, {"b": 2}]', NOW_MS) == [
        TelemetryEntry(NOW_MS, {"a": 1}), TelemetryEntry(NOW_MS, {"b": 2})]


def test_ts_values_object_keeps_device_ts():
    assert parse_telemetry(b'{"ts": 1451649600512, "values": {"a": 1}}', NOW_MS) == [
        TelemetryEntry(1451649600512, {"a": 1})]


def test_mixed_array_of_flat_and_ts_values_objects():
    payload = b'[{"a": 1}, {"ts": 1000, "values": {"b": "x"}}, {"c": false}]'
    assert parse_telemetry(payload, NOW_MS) == [
        TelemetryEntry(NOW_MS, {"a": 1}),
        TelemetryEntry(1000, {"b": "x"}),
        TelemetryEntry(NOW_MS, {"c": False}),
    ]


def test_ts_zero_is_accepted():
    assert parse_telemetry(b'{"ts": 0, "values": {"a": 1}}', NOW_MS) == [TelemetryEntry(0, {"a": 1})]


def test_ts_without_values_is_an_ordinary_key():
    # ThingsBoard only treats {"ts", "values"} together as the timestamped form.
    assert parse_telemetry(b'{"ts": 5, "a": 1}', NOW_MS) == [TelemetryEntry(NOW_MS, {"ts": 5, "a": 1})]


def test_values_are_kept_as_sent():
    payload = (b'{"s": "text", "b": false, "i": 7, "f": 2.5, "o": {"x": [1, {"y": null}]},'
               b' "l": [1, "two", 3.0], "big": 123456789012345678901234567890, "neg": -9007199254740993}')
    [entry] = parse_telemetry(payload, NOW_MS)
    assert entry.values == {
        "s": "text", "b": False, "i": 7, "f": 2.5, "o": {"x": [1, {"y": None}]},
        "l": [1, "two", 3.0], "big": 123456789012345678901234567890, "neg": -9007199254740993,
    }
    # types survive: integers stay integers, floats stay floats, booleans stay booleans
    assert type(entry.values["i"]) is int
    assert type(entry.values["f"]) is float
    assert type(entry.values["b"]) is bool
    assert type(entry.values["l"][2]) is float
    # and they re-serialise byte-exactly, big integers included
    assert dumps(entry.values["big"]) == b"123456789012345678901234567890"
    assert dumps(entry.values["f"]) == b"2.5"


def test_unicode_values_and_keys_survive():
    [entry] = parse_telemetry('{"Temperatür": "wärm ☀"}'.encode("utf-8"), NOW_MS)
    assert entry.values == {"Temperatür": "wärm ☀"}


def test_null_values_are_dropped():
    assert parse_telemetry(b'{"a": null, "b": 1}', NOW_MS) == [TelemetryEntry(NOW_MS, {"b": 1})]


def test_null_values_inside_ts_values_are_dropped():
    assert parse_telemetry(b'{"ts": 1, "values": {"a": null, "b": 2}}', NOW_MS) == [
        TelemetryEntry(1, {"b": 2})]


def test_array_element_with_only_nulls_is_dropped():
    assert parse_telemetry(b'[{"a": null}, {"b": 2}]', NOW_MS) == [TelemetryEntry(NOW_MS, {"b": 2})]


# -- telemetry: refused with 4.00 --------------------------------------------

@pytest.mark.parametrize("payload", [
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{a: 1}", id="unquoted_key"),
    pytest.param(b"{'a': 1}", id="single_quotes"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b'{"a": -Infinity}', id="minus_infinity"),
    pytest.param(b'{"a": 1} x', id="trailing_garbage"),
    pytest.param(b'\xff\xfe{"a": 1}', id="not_utf8"),
    pytest.param(b'"text"', id="top_level_string"),
    pytest.param(b"42", id="top_level_number"),
    pytest.param(b"true", id="top_level_bool"),
    pytest.param(b"null", id="top_level_null"),
    pytest.param(b'[{"a": 1}, 2]', id="array_with_number"),
    pytest.param(b'[{"a": 1}, [{"b": 2}]]', id="array_with_array"),
    pytest.param(b'[{"a": 1}, null]', id="array_with_null"),
    pytest.param(b'{"ts": 1.5, "values": {"a": 1}}', id="ts_float"),
    pytest.param(b'{"ts": "1000", "values": {"a": 1}}', id="ts_string"),
    pytest.param(b'{"ts": true, "values": {"a": 1}}', id="ts_bool"),
    pytest.param(b'{"ts": -1, "values": {"a": 1}}', id="ts_negative"),
    pytest.param(b'{"ts": null, "values": {"a": 1}}', id="ts_null"),
    pytest.param(b'{"ts": 1000, "values": [1, 2]}', id="values_array"),
    pytest.param(b'{"ts": 1000, "values": "a"}', id="values_string"),
    pytest.param(b'{"ts": 1000, "values": {}}', id="values_empty"),
    pytest.param(b"[]", id="empty_array"),
    pytest.param(b"{}", id="empty_object"),
    pytest.param(b'{"a": null}', id="only_nulls"),
])
def test_bad_telemetry_gets_4_00(payload):
    err = assert_bad_request(parse_telemetry, payload, NOW_MS)
    assert err.reason.startswith("telemetry")


def test_float_overflow_gets_4_00():
    assert_bad_request(parse_telemetry, b'{"a": 1e400}', NOW_MS)


# -- attributes ---------------------------------------------------------------

def test_attributes_flat_object_is_accepted():
    assert parse_attributes(b'{"fw": "1.2", "n": 3, "cfg": {"k": [1]}, "gone": null}') == {
        "fw": "1.2", "n": 3, "cfg": {"k": [1]}}


@pytest.mark.parametrize("payload", [
    pytest.param(b'[{"a": 1}]', id="array"),
    pytest.param(b'"a"', id="string"),
    pytest.param(b"", id="empty"),
    pytest.param(b"{}", id="empty_object"),
    pytest.param(b'{"a": null}', id="only_nulls"),
    pytest.param(b'{"a": NaN}', id="nan"),
])
def test_bad_attributes_get_4_00(payload):
    err = assert_bad_request(parse_attributes, payload)
    assert err.reason.startswith("attributes")


# -- claim ----------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"  \n", b"{}", b'{"secretKey": null, "durationMs": null}'])
def test_claim_defaults_to_empty_secret_and_zero_duration(payload):
    assert parse_claim(payload) == Claim("", 0)


def test_claim_explicit_values():
    assert parse_claim(b'{"secretKey": "s3cr3t", "durationMs": 60000}') == Claim("s3cr3t", 60000)


def test_claim_partial_values_default_the_rest():
    assert parse_claim(b'{"durationMs": 5}') == Claim("", 5)
    assert parse_claim(b'{"secretKey": "k"}') == Claim("k", 0)


@pytest.mark.parametrize("payload", [
    pytest.param(b'{"secretKey": 5}', id="secret_number"),
    pytest.param(b'{"secretKey": ["a"]}', id="secret_array"),
    pytest.param(b'{"durationMs": "1000"}', id="duration_string"),
    pytest.param(b'{"durationMs": 1.5}', id="duration_float"),
    pytest.param(b'{"durationMs": true}', id="duration_bool"),
])
def test_claim_wrong_types_get_4_00(payload):
    assert_bad_request(parse_claim, payload)


@pytest.mark.parametrize("payload", [b"[]", b'"key"', b"3", b"null", b"{bad"])
def test_claim_non_object_gets_4_00(payload):
    assert_bad_request(parse_claim, payload)


# -- helpers ---------------------------------------------------------------------

def test_split_query_last_occurrence_wins():
    assert split_query(("a=1", "b=2", "a=3")) == {"a": "3", "b": "2"}


def test_split_query_keeps_equals_in_value_and_ignores_items_without_equals():
    assert split_query(("k=a=b", "flag", "empty=")) == {"k": "a=b", "empty": ""}


def test_split_query_empty():
    assert split_query(()) == {}


def test_dumps_is_compact_utf8():
    assert dumps({"a": [1, "ä"]}) == '{"a":[1,"ä"]}'.encode("utf-8")
