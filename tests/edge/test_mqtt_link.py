"""The MQTT link's paho glue, over a socket pair: the test plays the broker with raw packets.

The reactor is Twisted's ``MemoryReactorClock``; the test calls the link's read
handler where the reactor would, after writing the broker's bytes.
"""

import socket

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from bridge.settings import MqttConfig
from bridge.edge.mqtt import MqttLink

CONNACK = b"\x20\x02\x00\x00"  # MQTT 3.1.1, accepted


def publish_qos1(topic, payload, mid):
    body = len(topic).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


def puback(mid):
    return b"\x40\x02" + mid.to_bytes(2, "big")


class Listener:
    def __init__(self, failing=()):
        self.failing = set(failing)
        self.messages = []
        self.downs = []

    def link_up(self):
        pass

    def link_down(self, reason):
        self.downs.append(reason)

    def published(self, mid, reason_code):
        pass

    def message(self, topic, payload):
        self.messages.append((topic, payload))
        if payload in self.failing:
            raise RecursionError("maximum recursion depth exceeded")  # what deep JSON did


@pytest.fixture
def events():
    seen = []

    def observer(event):
        if event.get("log_namespace", "").startswith("coapbridge."):
            seen.append(event)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def connected(listener):
    """A link whose paho client speaks MQTT 3.1.1 on one end of a socket pair."""
    reactor = MemoryReactorClock()
    link = MqttLink(reactor, MqttConfig(client_id="t", protocol="3.1.1"), listener,
                    subscriptions=[])
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.settimeout(2)
    link._running = True
    link._hand_over(ours)  # CONNECT goes out
    link._flush()
    assert broker.recv(1024)[:1] == b"\x10"
    broker.sendall(CONNACK)
    link._read()
    assert link.connected
    return reactor, link, broker


def received(broker, size):
    data = b""
    while len(data) < size:
        data += broker.recv(1024)
    return data


def test_a_message_whose_handler_raises_is_skipped_and_the_link_keeps_reading(events):
    listener = Listener(failing={b"boom"})
    reactor, link, broker = connected(listener)
    broker.sendall(publish_qos1("v1/gateway/attributes", b"boom", 1)
                   + publish_qos1("v1/gateway/attributes", b"fine", 2))
    link._read()
    link._read()  # where a stuck paho client would hand over "boom" again
    assert listener.messages == [("v1/gateway/attributes", b"boom"),
                                 ("v1/gateway/attributes", b"fine")]
    assert received(broker, 8) == puback(1) + puback(2)  # both acknowledged
    assert link.connected and listener.downs == [] and link.failed_messages == 1
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["topic"] == "v1/gateway/attributes"
    broker.close()


def test_failures_on_one_topic_log_one_traceback_a_minute(events):
    listener = Listener(failing={b"boom"})
    reactor, link, broker = connected(listener)
    for mid in range(1, 6):
        broker.sendall(publish_qos1("v1/gateway/rpc", b"boom", mid))
        link._read()
        reactor.advance(1)
    broker.sendall(publish_qos1("v1/gateway/attributes", b"boom", 6))  # another topic
    link._read()
    reactor.advance(60)
    broker.sendall(publish_qos1("v1/gateway/rpc", b"boom", 7))
    link._read()
    tracebacks = [e["topic"] for e in events if e.get("log_failure") is not None]
    assert tracebacks == ["v1/gateway/rpc", "v1/gateway/attributes", "v1/gateway/rpc"]
    short = [e for e in events if e.get("log_failure") is None and e.get("topic")
             and e["log_level"] == LogLevel.warn]
    assert len(short) == 4  # the others: one line each, no traceback
    assert link.failed_messages == 7 and link.connected
    broker.close()


def test_a_clean_stop_leaves_no_timer_behind():
    reactor, link, broker = connected(Listener())
    stopped = []
    link.stop().addCallback(stopped.append)
    reactor.advance(0)  # DISCONNECT goes out and paho closes the socket
    assert stopped == [None]
    assert reactor.getDelayedCalls() == []  # not the forced close two seconds later
    broker.close()


def test_one_read_takes_every_message_the_socket_holds_with_nothing_in_flight():
    # paho's loop_read reads one packet per call when nothing is in flight: a fan-out of
    # shared-attribute pushes would cost a reactor iteration per notification
    listener = Listener()
    reactor, link, broker = connected(listener)
    broker.sendall(b"".join(publish_qos1("v1/gateway/attributes", b"%d" % n, n)
                            for n in range(1, 151)))
    link._read()
    assert [payload for _, payload in listener.messages] == [b"%d" % n for n in range(1, 101)]
    assert received(broker, 400) == b"".join(puback(n) for n in range(1, 101))
    link._read()  # the rest on the next turn: one read is bounded
    assert len(listener.messages) == 150 and link.connected
    broker.close()


def connected5(listener):
    """As ``connected``, over MQTT 5 (the shipped protocol)."""
    reactor = MemoryReactorClock()
    link = MqttLink(reactor, MqttConfig(client_id="t"), listener, subscriptions=[])
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.settimeout(2)
    link._running = True
    link._hand_over(ours)
    link._flush()
    assert broker.recv(1024)[:1] == b"\x10"
    broker.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: success, no properties
    link._read()
    assert link.connected
    return reactor, link, broker


def publish5(topic, payload, mid, properties=b"\x00"):
    body = len(topic).to_bytes(2, "big") + topic.encode()
    body += (mid.to_bytes(2, "big") if mid else b"") + properties + payload
    assert len(body) < 128
    return bytes([0x32 if mid else 0x30, len(body)]) + body


def test_mqtt5_messages_with_and_without_properties_arrive_and_qos1_ones_are_acknowledged():
    listener = Listener()
    reactor, link, broker = connected5(listener)
    user_property = b"\x26\x00\x01k\x00\x01v"  # User Property k=v
    broker.sendall(publish5("v1/gateway/attributes", b'{"a":1}', 1)
                   + publish5("v1/gateway/rpc", b'{"b":2}', 2, bytes([len(user_property)])
                              + user_property)
                   + publish5("v1/gateway/attributes", b'{"c":3}', 0))  # QoS 0
    link._read()
    assert listener.messages == [("v1/gateway/attributes", b'{"a":1}'),
                                 ("v1/gateway/rpc", b'{"b":2}'),
                                 ("v1/gateway/attributes", b'{"c":3}')]
    assert received(broker, 8) == puback(1) + puback(2)
    assert link.connected and listener.downs == []
    broker.close()


def test_a_topic_that_is_not_utf8_is_skipped_and_the_link_keeps_reading(events):
    listener = Listener()
    reactor, link, broker = connected5(listener)
    broker.sendall(publish5("x", b"bad", 1).replace(b"\x00\x01x", b"\x00\x01\xff")
                   + publish5("v1/gateway/attributes", b"fine", 2))
    link._read()
    assert listener.messages == [("v1/gateway/attributes", b"fine")]
    assert received(broker, 8) == puback(1) + puback(2)
    assert link.failed_messages == 1 and link.connected
    broker.close()


def test_a_publish_whose_properties_overrun_it_drops_the_connection():
    listener = Listener()
    reactor, link, broker = connected5(listener)
    broker.sendall(publish5("v1/gateway/attributes", b"", 1, b"\x09ab"))
    link._read()
    assert listener.messages == [] and not link.connected
    assert listener.downs  # the core hears the link is down; a reconnect follows
    broker.close()
