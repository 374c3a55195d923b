"""The platform's PUBLISH packets decoded without paho's ``Properties`` (issue #26.3).

paho stays the MQTT client; only the decoding of an inbound QoS 0 or 1 PUBLISH is ours
(``_ReadyClient._handle_publish`` in mqtt.py calls it). paho cannot serve here: its
``_packet.decode_publish`` builds a ``Properties`` object for every MQTT 5 PUBLISH, whose
constructor builds the name tables of every property and whose ``clear()`` probes each
name (about 27 ``hasattr`` and 31 ``str.replace`` calls per message), and then an
``MQTTMessage`` with its ``MQTTMessageInfo`` and a ``threading.Condition``, none of which
the bridge reads. Without them an attribute push's way from the socket to the device's
notification takes 234.9 k instructions instead of 433.0 k (callgrind,
``bench/observerprofile.py -n 2000 --fanout``). paho has no switch to skip either.

The bridge reads nothing from an inbound message but its topic and payload (on paho's
path too the properties went to no one; the bridge asks for no topic aliases, so a
broker must not use them), so the properties are skipped, not decoded: their length is
checked against the packet, their content is not. Lengths
that do not fit the packet raise paho's ``MalformedPacket``, which paho turns into a
protocol error and a closed connection, as for a packet its own decoder rejects.
"""

from __future__ import annotations

from typing import Tuple, Union

from paho.mqtt.exception import MalformedPacket

MAX_VARIABLE_BYTES = 4  # MQTT 5 §1.5.5: a Variable Byte Integer has at most 4 bytes


def decode_publish(header: int, packet: Union[bytes, bytearray],
                   mqtt5: bool) -> Tuple[bytes, int, bytes]:
    """(topic, packet identifier, payload) of a PUBLISH: ``header`` its first byte,
    ``packet`` the rest after the remaining length. The identifier is 0 at QoS 0."""
    size = len(packet)
    if size < 2:
        raise MalformedPacket("PUBLISH shorter than its topic length")
    end = 2 + ((packet[0] << 8) | packet[1])
    if end > size:
        raise MalformedPacket("PUBLISH topic longer than the packet")
    if end == 2 and not mqtt5:
        raise MalformedPacket("topic can't be empty in MQTTv3")
    topic = bytes(packet[2:end])
    mid = 0
    if header & 0x06:
        if end + 2 > size:
            raise MalformedPacket("PUBLISH without its packet identifier")
        mid = (packet[end] << 8) | packet[end + 1]
        end += 2
    if mqtt5:
        if end < size and packet[end] == 0:  # no properties: the usual case
            end += 1
        else:
            end = _skip_properties(packet, end, size)
    return topic, mid, bytes(packet[end:])


def _skip_properties(packet: Union[bytes, bytearray], at: int, size: int) -> int:
    """Where the payload starts after the properties at ``at`` (their length, a Variable
    Byte Integer, then that many bytes)."""
    length, shift = 0, 0
    for _ in range(MAX_VARIABLE_BYTES):
        if at >= size:
            raise MalformedPacket("PUBLISH without its property length")
        byte = packet[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if at + length > size:
                raise MalformedPacket("PUBLISH properties longer than the packet")
            return at + length
    raise MalformedPacket("PUBLISH property length over 4 bytes")
