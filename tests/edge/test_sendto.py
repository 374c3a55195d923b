"""A datagram the operating system refuses (``sendto`` fails) harms no other datagram of
the drain: dropped, counted by reason, said once a minute (bridge/edge/sendto.py).

The errors are the real ones of Twisted's own UDP port on a real socket bound to the
loopback (the reactor only records the port's reader): a broadcast address without
SO_BROADCAST (EACCES), an IPv6 address on an IPv4 port, a datagram over 64 KiB."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import udp
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

import coapraw as raw
from bridge.core import codes
from bridge.coap.message import make_response
from bridge.edge import coap as edge
from bridge.edge.sendto import SendFailures, reason


@pytest.fixture
def warnings():
    events = []

    def observer(event):
        if event.get("log_level") == LogLevel.warn or event.get("isError") \
                or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            events.append(event)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def bridge_port():
    """A BridgeCoap on a real UDP port of 127.0.0.1, and a device socket beside it."""
    reactor = MemoryReactorClock()
    protocol = edge.create_protocol(lambda request: make_response(codes.CREATED), reactor,
                                    0.5, 247.0)
    port = udp.Port(0, protocol, "127.0.0.1", reactor=reactor)
    port.startListening()
    device = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    device.bind(("127.0.0.1", 0))
    device.settimeout(5)
    yield reactor, protocol, device
    device.close()
    port.stopListening()


def test_an_unsendable_notification_leaves_the_others_of_the_drain_sent(bridge_port, warnings):
    reactor, protocol, device = bridge_port
    here = device.getsockname()
    protocol.notify(1, ("255.255.255.255", 5683), b"\x01", codes.CONTENT, b"{}", 2, None)
    protocol.notify(2, ("::1", 5683), b"\x02", codes.CONTENT, b"{}", 2, None)
    protocol.notify(3, here, b"\x03", codes.CONTENT, b'{"k": 1}', 2, None)
    got = raw.decode(device.recv(2048))
    assert got.token == b"\x03" and got.payload == b'{"k": 1}'
    assert protocol.send_failures.samples() == ((("udp", "EACCES"), 1),
                                                (("udp", "EAFNOSUPPORT"), 1))
    assert [e["reason"] for e in warnings] == ["EACCES", "EAFNOSUPPORT"]  # no traceback
    assert "255.255.255.255" in warnings[0]["peer"]


def test_the_refused_con_is_sent_again_by_its_retransmission_and_said_once_a_minute(
        bridge_port, warnings):
    reactor, protocol, device = bridge_port
    outcomes = []
    protocol.on_result = lambda ref, outcome: outcomes.append((ref, outcome))
    protocol.notify(1, ("255.255.255.255", 5683), b"\x01", codes.CONTENT, b"{}", 2, None)
    for _ in range(300):
        reactor.advance(1.0)
    # sent and refused 5 times (the first and 4 retransmissions, all within 45 s of
    # exponential backoff), said once; then its fate, as for any CON never acknowledged
    assert protocol.send_failures.counts == {"EACCES": 5}
    assert len(warnings) == 1 and warnings[0]["unsaid"] == 0
    assert outcomes == [(1, "timeout")]
    protocol._write(b"x", ("255.255.255.255", 5683))  # past the minute: said, with the 4
    assert len(warnings) == 2 and warnings[1]["unsaid"] == 4


def test_the_reasons_are_errno_names():
    from twisted.internet.error import InvalidAddressError, MessageLengthError
    assert reason(PermissionError(13, "Permission denied")) == "EACCES"
    assert reason(OSError(101, "Network is unreachable")) == "ENETUNREACH"
    assert reason(MessageLengthError()) == "EMSGSIZE"
    assert reason(InvalidAddressError("::1", "IPv4 port")) == "EAFNOSUPPORT"


def test_a_datagram_over_64_kib_is_counted_not_raised(bridge_port):
    reactor, protocol, device = bridge_port
    protocol._write(b"x" * 70000, device.getsockname())
    assert protocol.send_failures.counts == {"EMSGSIZE": 1}


def test_failures_of_one_reason_within_the_interval_are_told_in_the_next_line(warnings):
    from twisted.internet.task import Clock
    clock = Clock()
    failures = SendFailures(clock, "dtls")
    for _ in range(3):
        failures.failed(OSError(101, "Network is unreachable"), ("10.9.9.9", 5684))
    clock.advance(61)
    failures.failed(OSError(101, "Network is unreachable"), ("10.9.9.9", 5684))
    assert [e["unsaid"] for e in warnings] == [0, 2]
    assert failures.samples() == ((("dtls", "ENETUNREACH"), 4),)
