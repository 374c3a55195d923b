"""Our PUBLISH decoder (bridge/edge/mqtt_inbound.py) against paho's own, packet by packet."""

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.edge.mqtt_inbound import decode_publish


def properties(**values):
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props.pack()


def body(topic, payload, mid=None, props=None):
    out = len(topic).to_bytes(2, "big") + topic
    if mid is not None:
        out += mid.to_bytes(2, "big")
    if props is not None:
        out += props
    return bytearray(out + payload)  # paho reads a packet into a bytearray


LONG_PROPS = properties(UserProperty=[("k%d" % n, "v" * 40) for n in range(4)])
CASES = [  # header, packet, MQTT 5
    (0x32, body(b"v1/gateway/attributes", b'{"device":"a"}', 7, b"\x00"), True),
    (0x30, body(b"v1/gateway/attributes", b"{}", None, b"\x00"), True),
    (0x3A, body(b"v1/gateway/rpc", b"x", 65535, properties(
        PayloadFormatIndicator=1, MessageExpiryInterval=60, ContentType="application/json",
        ResponseTopic="r/1", CorrelationData=b"\x01\x02")), True),
    (0x33, body(b"t", b"payload" * 30, 2, LONG_PROPS), True),  # retained; length > 127
    (0x32, body(b"t", b"", 3, b"\x00"), True),  # empty payload
    (0x30, body(b"", b"aliased", None, properties(TopicAlias=3)), True),
    (0x32, body(b"v1/gateway/attributes", b'{"device":"a"}', 9), False),
    (0x30, body("é/ü".encode(), b"\xff\x00", None), False),
]


@pytest.mark.parametrize("header, packet, mqtt5", CASES)
def test_a_publish_decodes_as_paho_decodes_it(header, packet, mqtt5):
    protocol = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
    theirs = _packet.decode_publish(header, bytes(packet), protocol)
    ours = decode_publish(header, packet, mqtt5)
    assert ours == (theirs.topic, theirs.mid, theirs.payload)
    assert type(ours[0]) is bytes and type(ours[2]) is bytes


@pytest.mark.parametrize("header, packet, mqtt5, why", [
    (0x32, bytearray(b"\x00"), True, "shorter than its topic length"),
    (0x32, bytearray(b"\x00\x09v1/ga"), True, "topic longer"),
    (0x32, bytearray(b"\x00\x01t\x00"), True, "packet identifier"),
    (0x30, bytearray(b"\x00\x01t"), True, "property length"),
    (0x30, bytearray(b"\x00\x01t\x05ab"), True, "properties longer"),
    (0x30, bytearray(b"\x00\x01t\xff\xff\xff\xff\x01"), True, "over 4 bytes"),
    (0x30, bytearray(b"\x00\x00payload"), False, "empty"),
])
def test_a_publish_that_does_not_fit_its_packet_is_malformed(header, packet, mqtt5, why):
    with pytest.raises(MalformedPacket, match=why):
        decode_publish(header, packet, mqtt5)
