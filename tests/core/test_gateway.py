"""Gateway topics, payload bytes and the PUBLISH size guard (bridge.core.gateway)."""

import json

import pytest

from bridge.core import gateway, payloads
from bridge.core.payloads import Claim, TelemetryEntry

paho_client = pytest.importorskip("paho.mqtt.client")


# -- topics and exact payload bytes -------------------------------------------

def test_connect_message():
    assert gateway.connect("Dev A", "thermo") == (
        "v1/gateway/connect", b'{"device":"Dev A","type":"thermo"}')


def test_disconnect_message():
    assert gateway.disconnect("Dev A") == ("v1/gateway/disconnect", b'{"device":"Dev A"}')


def test_telemetry_message():
    entries = [TelemetryEntry(1000, {"t": 21.5, "on": True}), TelemetryEntry(2000, {"s": "x"})]
    assert gateway.telemetry("Dev A", entries) == (
        "v1/gateway/telemetry",
        b'{"Dev A":[{"ts":1000,"values":{"t":21.5,"on":true}},{"ts":2000,"values":{"s":"x"}}]}')


def test_telemetry_message_keeps_nested_values_and_big_ints():
    entries = [TelemetryEntry(1, {"o": {"a": [1, None]}, "big": 2 ** 70})]
    assert gateway.telemetry("d", entries)[1] == (
        b'{"d":[{"ts":1,"values":{"o":{"a":[1,null]},"big":1180591620717411303424}}]}')


def test_attributes_message():
    assert gateway.attributes("Dev A", {"fw": "1.0", "n": 3}) == (
        "v1/gateway/attributes", b'{"Dev A":{"fw":"1.0","n":3}}')


def test_claim_message():
    assert gateway.claim("Dev A", Claim("s3cr3t", 60000)) == (
        "v1/gateway/claim", b'{"Dev A":{"secretKey":"s3cr3t","durationMs":60000}}')


def test_claim_message_with_defaults():
    assert gateway.claim("Dev A", Claim()) == (
        "v1/gateway/claim", b'{"Dev A":{"secretKey":"","durationMs":0}}')


def test_device_names_are_sent_as_utf8_not_escaped():
    topic, payload = gateway.connect('Gerät "1"', "thermo")
    assert payload == '{"device":"Gerät \\"1\\"","type":"thermo"}'.encode("utf-8")


# -- publish_packet_size --------------------------------------------------------

def remaining_length_bytes(remaining):
    """MQTT fixed header: Remaining Length is a 1-4 byte variable byte integer (7 bits each)."""
    if remaining < 128:
        return 1
    if remaining < 16384:
        return 2
    if remaining < 2097152:
        return 3
    return 4


def expected_size(topic, payload, mqtt5):
    """QoS 1 PUBLISH: type byte + Remaining Length + topic (2-byte length + bytes)
    + packet identifier (2) + [MQTT 5: property length 0 (1 byte)] + payload."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + (1 if mqtt5 else 0) + len(payload)
    return 1 + remaining_length_bytes(remaining) + remaining


def paho_publish_bytes(topic, payload, mqtt5):
    """The PUBLISH packet paho itself builds (QoS 1, no properties), captured before any I/O."""
    protocol = paho_client.MQTTv5 if mqtt5 else paho_client.MQTTv311
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, client_id="t",
                                protocol=protocol)
    captured = []

    class NoSocket:
        def close(self):
            pass

    client._sock = NoSocket()  # _send_publish refuses to build a packet with no connection
    client._packet_queue = lambda command, packet, mid, qos, info=None: captured.append(bytes(packet))
    try:
        client._send_publish(1, topic.encode("utf-8"), payload, qos=1)
    finally:
        client._sock = None
    assert len(captured) == 1
    return captured[0]


TELEMETRY_TOPIC = "v1/gateway/telemetry"


@pytest.mark.parametrize("mqtt5,payload_len,expected", [
    # small: remaining = 2 + 20 + 2 (+1) + 10 -> one length byte
    (False, 10, 1 + 1 + 34),
    (True, 10, 1 + 1 + 35),
    # large: remaining = 2 + 20 + 2 (+1) + 20000 -> three length bytes (> 16383)
    (False, 20000, 1 + 3 + 20024),
    (True, 20000, 1 + 3 + 20025),
], ids=["3.1.1-small", "5-small", "3.1.1-large", "5-large"])
def test_publish_packet_size_hand_computed(mqtt5, payload_len, expected):
    assert gateway.publish_packet_size(TELEMETRY_TOPIC, b"x" * payload_len, mqtt5) == expected


@pytest.mark.parametrize("mqtt5", [False, True], ids=["3.1.1", "5"])
@pytest.mark.parametrize("payload_len", [
    0, 1, 50,
    # around the 1/2-byte Remaining Length boundary (127/128)
    102, 103, 104,
    # around the 2/3-byte boundary (16383/16384)
    16357, 16358, 16359, 16360,
    20000, 65536, 200000,
])
def test_publish_packet_size_matches_paho_encoding(mqtt5, payload_len):
    payload = b"x" * payload_len
    size = gateway.publish_packet_size(TELEMETRY_TOPIC, payload, mqtt5)
    assert size == len(paho_publish_bytes(TELEMETRY_TOPIC, payload, mqtt5))
    assert size == expected_size(TELEMETRY_TOPIC, payload, mqtt5)


def test_publish_packet_size_crosses_length_byte_boundaries():
    # 3.1.1: remaining = 24 + n; 127 -> 1 byte, 128 -> 2 bytes
    assert gateway.publish_packet_size(TELEMETRY_TOPIC, b"x" * 103, False) == 1 + 1 + 127
    assert gateway.publish_packet_size(TELEMETRY_TOPIC, b"x" * 104, False) == 1 + 2 + 128
    # 16383 -> 2 bytes, 16384 -> 3 bytes
    assert gateway.publish_packet_size(TELEMETRY_TOPIC, b"x" * 16359, False) == 1 + 2 + 16383
    assert gateway.publish_packet_size(TELEMETRY_TOPIC, b"x" * 16360, False) == 1 + 3 + 16384


def test_publish_packet_size_counts_topic_in_utf8_bytes():
    topic = "v1/gateway/tëlemetry"  # 'ë' is two bytes
    payload = b"{}"
    assert gateway.publish_packet_size(topic, payload, True) == len(paho_publish_bytes(topic, payload, True))
    assert gateway.publish_packet_size(topic, payload, True) == (
        gateway.publish_packet_size("v1/gateway/telemetry", payload, True) + 1)


def test_publish_packet_size_of_real_gateway_messages_matches_paho():
    for topic, payload in (gateway.connect("Dev A", "thermo"),
                           gateway.telemetry("Dev A", [TelemetryEntry(1, {"v": "x" * 30000})])):
        for mqtt5 in (False, True):
            assert gateway.publish_packet_size(topic, payload, mqtt5) == len(
                paho_publish_bytes(topic, payload, mqtt5))


# -- uploads carried as the device sent them ------------------------------------------------

PLAIN = [b'{"temperature":21.5}', b' {"a": 1, "b": "x\\u00e9", "c": {"nested": null}} \n',
         b'{"big": 123456789012345678901234567890, "f": 1e-7, "t": true}',
         b'{"ts": 5}', b'{"values": {"a": 1}}', '{"Grüße": "ü"}'.encode()]


@pytest.mark.parametrize("raw", PLAIN)
@pytest.mark.parametrize("device", ["Dev A", 'Gerät "7" \\ x'])
def test_telemetry_as_sent_means_the_same_as_the_re_encoded_message(raw, device):
    doc = payloads.parse_json(raw, "telemetry", 32)
    assert payloads.plain_values(doc)
    topic, fast = gateway.telemetry_as_sent(device, 1700000000000, raw)
    expected = gateway.telemetry(device, payloads.telemetry_entries(doc, 1700000000000))
    assert topic == expected[0]
    assert json.loads(fast) == json.loads(expected[1])


@pytest.mark.parametrize("raw", PLAIN)
def test_attributes_as_sent_means_the_same_as_the_re_encoded_message(raw):
    doc = payloads.parse_json(raw, "attributes", 32)
    topic, fast = gateway.attributes_as_sent("Dev \u00e9", raw)
    expected = gateway.attributes("Dev \u00e9", payloads.attribute_values(doc))
    assert (topic, json.loads(fast)) == (expected[0], json.loads(expected[1]))


@pytest.mark.parametrize("raw", [b'{"a": null, "b": 1}', b'{"ts": 5, "values": {"a": 1}}',
                                 b'[{"a": 1}]', b'{}', b'"text"', b'17'])
def test_uploads_needing_a_change_are_not_plain(raw):
    assert not payloads.plain_values(payloads.parse_json(raw, "telemetry", 32))
