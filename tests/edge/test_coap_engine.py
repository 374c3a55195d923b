"""The UDP edge (bridge/edge/coap.py) as a driver of the sans-IO message layer: datagrams
through a fake UDP transport, a ``Clock`` for time, real Deferreds from the handler. The
layers' own logic is tested without Twisted in tests/coap/; here what only the edge
does: one timer, handler failures answered 5.00 (W6), the receive buffer (W9), no
legacy logging (W1), a driver's transmit (the DTLS edge's), and answers given after their request's turn.
"""

from __future__ import annotations

import gc

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

import coapraw as raw
from bridge.coap.exchange import Incoming
from bridge.coap.message import make_response
from bridge.core import codes
from bridge.edge import coap as edge
from bridge.edge.datagram import DatagramDriver

PEER = ("127.0.0.1", 40000)
UPLINK = "/api/v1/t/telemetry"


class FakeUDP:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))

    def pop(self):
        out = [raw.decode(data) for data, _ in self.sent]
        self.sent.clear()
        return out


class Harness:
    def __init__(self, handler=None, empty_ack_delay=0.5, callback_handler=False):
        self.clock = Clock()
        self.calls = []
        self.handler = handler or (lambda request: defer.succeed(make_response(codes.CREATED)))
        self.protocol = edge.create_protocol(self._handle, self.clock, empty_ack_delay, 247.0,
                                             callback_handler=callback_handler)
        self.transport = FakeUDP()
        self.protocol.transport = self.transport
        self.protocol.startProtocol()

    def _handle(self, request, *respond):
        self.calls.append(request)
        return self.handler(request, *respond)

    def feed(self, msg_or_bytes, peer=PEER):
        data = msg_or_bytes if isinstance(msg_or_bytes, bytes) else raw.encode(msg_or_bytes)
        self.protocol.datagramReceived(data, peer)
        return self.transport.pop()


@pytest.fixture
def errors():
    """Collect log events at warn level or above (tracebacks included)."""
    events = []

    def observer(event):
        if event.get("log_level", LogLevel.info) >= LogLevel.warn or event.get("isError"):
            events.append(event)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_w1_no_legacy_log_lines_per_datagram(errors):
    # txThings wrote ~9 legacy log lines per datagram; the bridge's codec writes none
    legacy = []
    from twisted.python import log as legacy_log
    legacy_log.addObserver(legacy.append)
    try:
        h = Harness()
        h.feed(raw.request(raw.POST, UPLINK, b"{}"))
        h.feed(bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789")
    finally:
        legacy_log.removeObserver(legacy.append)
    assert [e for e in legacy if e.get("system") != "-" or e.get("message")] == []
    assert errors == []


def test_the_handler_gets_the_request_as_an_immutable_incoming():
    h = Harness()
    h.feed(raw.request(raw.POST, UPLINK, b'{"t":1}', mid=9))
    [incoming] = h.calls
    assert isinstance(incoming, Incoming) and incoming.peer == PEER
    assert incoming.message.uri_path == (b"api", b"v1", b"t", b"telemetry")
    assert incoming.message.payload == b'{"t":1}' and incoming.message.mid == 9


def test_fast_answer_is_piggybacked_in_the_ack_in_the_same_turn():
    h = Harness(handler=lambda request: make_response(codes.CREATED))  # answered at once
    replies = h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=78))
    assert [(r.mtype, r.code_str, r.mid) for r in replies] == [(raw.ACK, "2.01", 78)]
    h.clock.advance(1)
    assert h.transport.pop() == []


def test_w5_one_timer_serves_every_waiting_request():
    answers = {}

    def slow(request):
        answers[request.message.mid] = defer.Deferred()
        return answers[request.message.mid]
    h = Harness(handler=slow)
    sent = []
    for mid in range(10, 15):
        sent += h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=mid))
        assert len(h.clock.getDelayedCalls()) == 1  # the transport's one timer
        h.clock.advance(0.125)
    h.clock.advance(0.5)
    sent += h.transport.pop()
    assert [(r.mtype, r.code, r.mid) for r in sent] == [(raw.ACK, 0, mid) for mid in range(10, 15)]
    assert len(h.clock.getDelayedCalls()) == 1
    answers[12].callback(make_response(codes.CREATED))  # late: a separate CON
    [separate] = h.transport.pop()
    assert (separate.mtype, separate.code_str) == (raw.CON, "2.01")
    h.feed(raw.Msg(raw.ACK, 0, separate.mid))
    assert len(h.clock.getDelayedCalls()) == 1


def test_w5_no_timer_is_left_once_the_protocol_stops():
    h = Harness(handler=lambda request: defer.Deferred())
    h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=3))
    assert len(h.clock.getDelayedCalls()) == 1
    h.protocol.stopProtocol()
    assert h.clock.getDelayedCalls() == []


def test_w10_dedup_keeps_no_timer_per_datagram_and_forgets_after_the_lifetime():
    h = Harness()
    for mid in range(500):
        h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=mid))
    assert len(h.clock.getDelayedCalls()) == 1  # the transport's one timer
    assert len(h.protocol.layer.dedup) == 500
    h.clock.pump([5.0] * 49)  # 245 s: still within EXCHANGE_LIFETIME
    assert len(h.protocol.layer.dedup) == 500
    h.clock.pump([5.0] * 3)  # 260 s: past the lifetime plus one bucket
    assert len(h.protocol.layer.dedup) == 0
    assert len(h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=1))) == 1
    assert len(h.calls) == 501


def _raise(request):
    raise RuntimeError("boom")


@pytest.mark.parametrize("handler", [
    _raise,
    lambda request: defer.fail(RuntimeError("async boom")),
    lambda request: defer.succeed("not a message"),
], ids=["raises", "failed-deferred", "wrong-type"])
def test_w6_application_errors_answer_5_00_and_are_logged_once(handler, errors):
    h = Harness(handler=handler)
    replies = h.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=5))
    assert [(r.mtype, r.code_str, r.mid) for r in replies] == [(raw.ACK, "5.00", 5)]
    assert len(errors) == 1
    gc.collect()  # no "Unhandled error in Deferred" afterwards
    assert len(errors) == 1


def test_w6_late_failure_after_empty_ack_still_answers_5_00(errors):
    pending = defer.Deferred()
    h = Harness(handler=lambda request: pending)
    h.feed(raw.request(raw.POST, "/api/v1/t/rpc", b"{}", mid=6))
    h.clock.advance(0.5)
    assert [a.code for a in h.transport.pop()] == [0]
    pending.errback(RuntimeError("late"))
    [reply] = h.transport.pop()
    assert (reply.mtype, reply.code_str) == (raw.CON, "5.00")
    h.feed(raw.Msg(raw.ACK, 0, reply.mid))
    assert len(errors) == 1


def test_a_callback_handler_answers_in_the_ack_or_later_without_a_deferred():
    later = []

    def handler(request, respond):
        if request.message.mid == 1:
            respond(make_response(codes.CREATED), request)  # during its own turn
        else:
            later.append((respond, request))
    h = Harness(handler=handler, callback_handler=True)
    assert [(r.mtype, r.code_str, r.mid) for r in h.feed(
        raw.request(raw.POST, UPLINK, b"{}", mid=1))] == [(raw.ACK, "2.01", 1)]
    assert h.feed(raw.request(raw.POST, UPLINK, b"{}", mid=2)) == []
    [(respond, request)] = later
    respond(make_response(codes.CHANGED), request)  # a later turn, before the empty ACK
    assert [(r.mtype, r.code_str, r.mid) for r in h.transport.pop()] == [(raw.ACK, "2.04", 2)]
    respond(make_response(codes.CREATED), request)  # a second answer is ignored
    assert h.transport.pop() == []


def test_w6_a_callback_handler_may_return_its_answer_or_fail_like_a_plain_one(errors):
    h = Harness(handler=lambda request, respond: make_response(codes.CONTENT, b"x"),
                callback_handler=True)
    [reply] = h.feed(raw.request(raw.GET, "/a", mid=3))
    assert (reply.code_str, reply.payload) == ("2.05", b"x")
    h = Harness(handler=lambda request, respond: respond("not a message", request),
                callback_handler=True)
    [reply] = h.feed(raw.request(raw.GET, "/a", mid=4))
    assert (reply.mtype, reply.code_str) == (raw.ACK, "5.00")
    assert len(errors) == 1  # the wrong answer, logged once with its traceback
    h = Harness(handler=lambda request, respond: _raise(request), callback_handler=True)
    [reply] = h.feed(raw.request(raw.GET, "/a", mid=5))
    assert reply.code_str == "5.00" and len(errors) == 2


def test_w9_listen_uses_a_65535_byte_receive_buffer():
    calls = []

    class RecordingReactor:
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            calls.append((port, interface, maxPacketSize))

    edge.listen(RecordingReactor(), Harness().protocol, 5683, "::")
    assert calls == [(5683, "::", 65535)]  # Twisted's default of 8192 truncates datagrams


def test_notification_fates_reach_on_result_and_the_timer_retransmits_a_con():
    h = Harness()
    outcomes = []
    h.protocol.on_result = lambda ref, outcome: outcomes.append((ref, outcome))
    h.protocol.notify(1, PEER, b"\x0a", codes.CONTENT, b"{}", 3, None)  # unknown: CON
    [con] = h.transport.pop()
    h.clock.advance(3.0)  # past ACK_TIMEOUT * ACK_RANDOM_FACTOR
    assert h.transport.pop() == [con]
    h.feed(raw.Msg(raw.ACK, 0, con.mid))
    assert outcomes == [(1, "ack")]


class Session:
    """A DTLS session's peer key, as the DTLS edge hands it over (a ``DtlsPeer``)."""

    def __init__(self):
        self.key = "session 1"
        self.address = ("10.0.0.9", 5684)

    def __str__(self):
        return "session 1"


def test_a_driver_sends_to_its_transmit_and_trusts_what_its_transport_says():
    # the driver the DTLS edge has of its own: what goes to a session goes to its
    # transmit (to be encrypted), nothing to a UDP port
    sent = []
    driver = DatagramDriver(lambda request: make_response(codes.CONTENT, b"b" * 1000),
                            Clock(), edge.datagram_settings(0.5, 247.0),
                            transmit=lambda data, peer: sent.append((data, peer)))
    gone = []
    driver.on_peer_gone = gone.append
    session = Session()
    driver.received(raw.encode(raw.request(raw.GET, "/a", mid=1)), session)
    [(data, to)] = sent
    assert to is session
    assert raw.decode(data).option(raw.BLOCK2) is not None  # not yet trusted: amplification
    driver.trust(session)
    driver.received(raw.encode(raw.request(raw.GET, "/a", mid=2)), session)
    assert raw.decode(sent[-1][0]).payload == b"b" * 1000
    driver.forget(session)
    assert gone == [session] and not driver.layer.verified(session)


def test_a_datagram_the_port_refuses_leaves_the_events_after_it_sent_in_the_same_drain():
    h = Harness(handler=lambda request: make_response(codes.CREATED))
    h.protocol.notify(1, PEER, b"\x0a", codes.CONTENT, b"{}", 3, None)
    h.protocol.notify(2, PEER, b"\x0b", codes.CONTENT, b"{}", 4, None)
    h.protocol.notify(3, PEER, b"\x0c", codes.CONTENT, b"{}", 5, None)
    h.transport.pop()
    writes = []

    def refuse_once(data, addr):
        writes.append(data)
        if len(writes) == 1:
            raise OSError(105, "No buffer space available")
    h.transport.write = refuse_once
    h.clock.advance(3.0)  # three retransmissions due in one drain; the first write fails
    assert len(writes) == 3  # the two after it went out in the same drain, in order
    assert h.protocol.send_failures.counts == {"ENOBUFS": 1}  # counted (edge/sendto.py)
    assert len(h.clock.getDelayedCalls()) == 1  # the timer re-armed
