"""Tests of device payload parsing (bridge.core.payloads)."""

import pytest

from bridge.core import codes, payloads
from bridge.core.codes import BadRequest
from bridge.core.payloads import (MAX_DEPTH, Claim, TelemetryEntry, dumps, parse_attributes,
                                  parse_claim, parse_json, parse_telemetry, plain_values,
                                  split_query, values_text)

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


# -- bounds: nesting, the platform's long ------------------------------------------

def nested_value(levels):
    """An object whose value "v" makes the whole document ``levels`` deep."""
    return b'{"v": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


PARSERS = [pytest.param(lambda p: parse_telemetry(p, NOW_MS), id="telemetry"),
           pytest.param(parse_attributes, id="attributes"),
           pytest.param(parse_claim, id="claim"),
           pytest.param(lambda p: parse_json(p, "rpc reply", MAX_DEPTH), id="rpc")]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1200, 100_000])
def test_json_nested_deeper_than_the_bound_gets_4_00_naming_the_bound(parse, levels):
    err = assert_bad_request(parse, nested_value(levels))
    assert "nested deeper than %d levels" % MAX_DEPTH in err.reason


def test_json_at_the_bound_is_accepted():
    [entry] = parse_telemetry(nested_value(MAX_DEPTH), NOW_MS)
    assert entry.values["v"] == parse_json(nested_value(MAX_DEPTH), "t", MAX_DEPTH)["v"]


def test_the_bound_is_the_callers():
    assert_bad_request(parse_telemetry, nested_value(5), NOW_MS, 4)
    assert parse_telemetry(nested_value(5), NOW_MS, 5)


def test_ts_up_to_the_largest_long_is_accepted():
    payload = b'{"ts": %d, "values": {"a": 1}}' % (2 ** 63 - 1)
    assert parse_telemetry(payload, NOW_MS) == [TelemetryEntry(2 ** 63 - 1, {"a": 1})]


@pytest.mark.parametrize("ts", [2 ** 63, 2 ** 70, 10 ** 30, -1, -(2 ** 63)])
def test_ts_outside_a_long_from_0_gets_4_00(ts):
    for payload in (b'{"ts": %d, "values": {"a": 1}}' % ts,
                    b'[{"a": 1}, {"ts": %d, "values": {"a": 1}}]' % ts):
        err = assert_bad_request(parse_telemetry, payload, NOW_MS)
        assert "2**63-1" in err.reason


@pytest.mark.parametrize("duration", [2 ** 63 - 1, -1, -(2 ** 63)])
def test_claim_duration_within_a_long_is_kept(duration):
    # ThingsBoard takes durationMs <= 0 as its default duration: negative values are valid
    assert parse_claim(b'{"durationMs": %d}' % duration) == Claim("", duration)


@pytest.mark.parametrize("duration", [2 ** 63, 2 ** 70, -(2 ** 63) - 1])
def test_claim_duration_outside_a_long_gets_4_00(duration):
    err = assert_bad_request(parse_claim, b'{"durationMs": %d}' % duration)
    assert "durationMs" in err.reason


# -- duplicate keys: the last one wins ---------------------------------------------

def test_duplicate_keys_last_wins_in_every_form():
    assert parse_telemetry(b'{"a": 1, "a": 2}', NOW_MS) == [TelemetryEntry(NOW_MS, {"a": 2})]
    assert parse_telemetry(b'{"ts": 1, "values": {"a": 1, "a": 2}}', NOW_MS) == [
        TelemetryEntry(1, {"a": 2})]
    assert parse_telemetry(b'{"ts": 1, "values": {"a": 1}, "ts": 2}', NOW_MS) == [
        TelemetryEntry(2, {"a": 1})]
    assert parse_attributes(b'{"fw": "1", "fw": "2"}') == {"fw": "2"}
    assert parse_claim(b'{"secretKey": "a", "secretKey": "b"}') == Claim("b", 0)


@pytest.mark.parametrize("payload", [
    pytest.param(b'{"a": 1, "a": 2}', id="top_level"),
    pytest.param(b'{"a": 1, "b": 2, "a": 1}', id="same_value"),
    pytest.param(b'{"cfg": {"x": 1, "x": 2}}', id="nested"),
    pytest.param(b'{"l": [{"x": 1, "x": 2}]}', id="in_array"),
    pytest.param(b'{"a": 1, "a": 2, "at": "12:30"}', id="with_a_colon_in_a_string"),
])
def test_values_that_repeat_a_key_are_encoded_again_with_the_last_value(payload):
    doc = parse_json(payload, "telemetry", MAX_DEPTH)
    assert plain_values(doc)
    text = values_text(doc, payload)
    assert text == dumps(doc) and text != payload


@pytest.mark.parametrize("payload", [b'{"a": 1, "b": 2}', b' {"a":"x","e":{}} ', b'{"k": [1, 2]}'])
def test_values_without_a_repeated_key_are_kept_as_sent(payload):
    assert values_text(parse_json(payload, "telemetry", MAX_DEPTH), payload) is payload


@pytest.mark.parametrize("payload", [b'{"at": "12:30", "a": 1}', b'{"cfg": {"x": 1}}'])
def test_values_that_might_repeat_a_key_are_encoded_again_meaning_the_same(payload):
    doc = parse_json(payload, "telemetry", MAX_DEPTH)
    assert values_text(doc, payload) == dumps(doc)


# -- helpers ---------------------------------------------------------------------

def test_split_query_last_occurrence_wins():
    assert split_query(("a=1", "b=2", "a=3")) == {"a": "3", "b": "2"}


def test_split_query_keeps_equals_in_value_and_ignores_items_without_equals():
    assert split_query(("k=a=b", "flag", "empty=")) == {"k": "a=b", "empty": ""}


def test_split_query_empty():
    assert split_query(()) == {}


def test_dumps_is_compact_utf8():
    assert dumps({"a": [1, "ä"]}) == '{"a":[1,"ä"]}'.encode("utf-8")


@pytest.mark.parametrize("text", [
    '{"t":21.5}', ' {"t": 21.5} ', '{"a":[1,{"b":2.5e3}],"c":"NaN"}', '[{"t":1},{"t":-0.0}]',
    '"x"', '7', '1.5', 'null', '{"a":1,"a":2}', '{"a":{"b":[[[1.0]]]}}'])
def test_the_fast_decoder_reads_what_the_strict_one_reads(text):
    assert payloads._decode(text) == payloads._DECODER.decode(text)
    assert payloads._finite(payloads._decode(text))


@pytest.mark.parametrize("text, words", [
    ('{"t":NaN}', "NaN is not valid JSON"), ('{"t":[1,{"u":-Infinity}]}', "-Infinity"),
    ('{"t":1e999}', "number 1e999 is out of range"), ('[[-1e400]]', "-1e400 is out of range"),
    ('1e309', "out of range"), ('{"t":1} x', "Extra data"), ('{"t":', "Expecting value"),
    ('{t:1}', "Expecting property name")])
def test_the_fast_decoder_refuses_what_the_strict_one_refuses_in_its_words(text, words):
    with pytest.raises(ValueError) as strict:
        payloads._DECODER.decode(text)
    with pytest.raises(ValueError) as fast:
        payloads._decode(text)
    assert str(fast.value) == str(strict.value) and words in str(fast.value)


# -- the common upload's short way (plain_object) -----------------------------

SHAPES = [
    b'{"temperature":21.5,"humidity":40.5}', b'{"a": 1, "b": "x:y", "c": true}',
    b'{"a":1,"a":2}', b'{"nested":{"x":[1,2,{"y":3.5}]}}', b'{"ts":1,"values":{"a":1}}',
    b'{"ts":1}', b'{"a":null,"b":1}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}',
    b'{"a":1e999}', b'{"a":-1e999}', b'{"a":[1e999]}', b'{"a":{"b":1e400}}', b'{}',
    b' {"a":1}', b'{"a":1} ', b'{"a":1}}', b'{"a":1}{"b":2}', b'{"a":"\xff"}',
    b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", b'{"k{[":"{[{[{[{["}', b'{"a":-0.0,"b":1E5}',
    b'{"a":"\\u00e9"}', b'{"a":12345678901234567890123}', b'{"a" 1}', b'{"a":1,}',
]


def strict(payload, max_depth):
    """What ``parse_json`` and ``plain_values`` decide for ``payload``, the long way."""
    try:
        doc = parse_json(payload, "telemetry", max_depth)
    except BadRequest as exc:
        return "error", str(exc)
    return ("plain", doc) if plain_values(doc) else ("other", doc)


@pytest.mark.parametrize("payload", SHAPES)
@pytest.mark.parametrize("max_depth", [3, MAX_DEPTH])
def test_the_short_way_decodes_what_the_strict_decoder_does_or_leaves_it(payload, max_depth):
    decided = strict(payload, max_depth)
    short = payloads.plain_object(payload, max_depth)
    # taken: every plain upload that is one object with nothing around it and fewer
    # brackets than the bound; left (None) to parse_json, which words the errors: the rest
    assert (short is not None) == (decided[0] == "plain" and payload[:1] == b"{" and
                                   payload[-1:] == b"}" and
                                   payload.count(b"{") + payload.count(b"[") <= max_depth)
    if short is not None:
        assert decided == ("plain", short)
        assert [type(v) for v in short.values()] == [type(v) for v in decided[1].values()]


def test_the_short_way_takes_the_common_upload_and_refuses_what_is_not_finite():
    assert payloads.plain_object(b'{"temperature":21.5,"humidity":40.5}', MAX_DEPTH) == {
        "temperature": 21.5, "humidity": 40.5}
    for payload in (b'{"a":1e999}', b'{"a":{"b":[-1e999]}}', b'{"a":NaN}'):
        assert payloads.plain_object(payload, MAX_DEPTH) is None
        assert strict(payload, MAX_DEPTH)[0] == "error"


@pytest.mark.parametrize("payload", SHAPES)
def test_json_uploads_make_the_gateway_messages_the_long_way_makes(payload):
    from bridge.core import gateway
    from bridge.core.formats.json import JsonFormat

    def long_way(feature):
        try:
            doc = parse_json(payload, feature, MAX_DEPTH)
            if feature == "telemetry":
                if plain_values(doc):
                    return gateway.telemetry_as_sent("Dev", NOW_MS, values_text(doc, payload))
                return gateway.telemetry("Dev", payloads.telemetry_entries(doc, NOW_MS))
            values = payloads.attribute_values(doc)
            message = gateway.attributes_as_sent("Dev", values_text(doc, payload)) \
                if plain_values(doc) else gateway.attributes("Dev", values)
            return message + (values,)
        except BadRequest as exc:
            return str(exc)

    def short_way(call, *args):
        try:
            return call(*args)
        except BadRequest as exc:
            return str(exc)
    fmt = JsonFormat()
    assert short_way(fmt.telemetry, "Dev", payload, NOW_MS / 1000) == long_way("telemetry")
    assert short_way(fmt.attributes, "Dev", payload) == long_way("attributes")
