"""Regression tests for the txThings 0.3.0 defects fixed in bridge/edge/coap.py.

Each test drives ``BridgeCoap`` with raw datagrams through a fake UDP
transport and a ``Clock``: no sockets, no real time.
"""

from __future__ import annotations

import gc
import platform

import pytest
import txthings.coap as txcoap
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

import coapraw as raw
from bridge.core import codes
from bridge.coap.endpoint import BLOCK_GET_ACK_DELAY
from bridge.edge import coap as edge

PEER = ("127.0.0.1", 40000)
ETAG, OBSERVE = 4, 6


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
    def __init__(self, handler=None, empty_ack_delay=0.5):
        self.clock = Clock()
        self.calls = []
        self.handler = handler or (lambda request: defer.succeed(
            edge.make_response(codes.CREATED)))
        self.protocol = edge.create_protocol(self._handle, self.clock, empty_ack_delay, 247.0)
        self.transport = FakeUDP()
        self.protocol.transport = self.transport
        self.protocol.startProtocol()

    def _handle(self, request):
        self.calls.append(request)
        return self.handler(request)

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


def test_w1_txthings_legacy_logging_is_silenced(errors):
    legacy = []
    from twisted.python import log as legacy_log
    legacy_log.addObserver(legacy.append)
    try:
        h = Harness()
        h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}"))
    finally:
        legacy_log.removeObserver(legacy.append)
    assert isinstance(txcoap.log, edge.QuietLog)
    assert [e for e in legacy if e.get("system") != "-" or e.get("message")] == []


@pytest.mark.parametrize("datagram", [
    b"", b"\x40", b"\x40\x01\x00",              # shorter than a header
    b"\x80\x01\x00\x01", b"\x00\x01\x00\x01",   # version 2 and 0
], ids=["empty", "1-byte", "3-byte", "version-2", "version-0"])
def test_w2_short_or_wrong_version_datagrams_are_dropped_silently(datagram, errors):
    h = Harness()
    assert h.feed(datagram) == []
    assert errors == []
    assert h.calls == []


@pytest.mark.parametrize("datagram", [
    bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789",       # TKL 9
    bytes([0x4F, 0x01, 0x00, 0x07]) + b"x" * 15,          # TKL 15
    bytes([0x40, 0x01, 0x00, 0x07, 0xF1, 0x00]),          # option delta nibble 15
    bytes([0x40, 0x01, 0x00, 0x07, 0xD1]),                # delta 13 without its extension byte
    bytes([0x40, 0x01, 0x00, 0x07, 0xB5, 0x61]),          # Uri-Path claims 5 bytes, has 1
    bytes([0x40, 0x01, 0x00, 0x07, 0xFF]),                # payload marker, no payload
    bytes([0x40, 0x20, 0x00, 0x07]),                      # reserved class 1
    bytes([0x41, 0x00, 0x00, 0x07, 0x99]),                # empty message with a token
], ids=["tkl9", "tkl15", "nibble15", "ext-missing", "option-truncated", "marker-only",
        "class1", "empty-with-token"])
def test_w2_malformed_con_gets_rst_without_traceback(datagram, errors):
    h = Harness()
    replies = h.feed(datagram)
    assert [(r.mtype, r.code, r.mid, r.token) for r in replies] == [(raw.RST, 0, 7, b"")]
    assert errors == []
    assert h.calls == []


def test_w2_malformed_non_is_dropped_and_valid_requests_still_answered(errors):
    h = Harness()
    assert h.feed(bytes([0x59, 0x01, 0x00, 0x08]) + b"123456789") == []
    replies = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=9))
    assert [(r.mtype, r.code_str, r.mid) for r in replies] == [(raw.ACK, "2.01", 9)]
    assert errors == []


def test_w2_request_code_in_an_ack_is_ignored(errors):
    h = Harness()
    assert h.feed(raw.Msg(raw.ACK, raw.GET, 5, b"", raw.path_options("/a"))) == []
    assert errors == [] and h.calls == []


def test_w3_unknown_critical_option_gets_4_02():
    h = Harness()
    replies = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", extra=[(2049, b"x")]))
    assert [(r.mtype, r.code_str, r.token) for r in replies] == [(raw.ACK, "4.02", b"\x01\x02")]
    assert b"2049" in replies[0].payload
    assert h.calls == []


def test_w3_unknown_elective_option_is_ignored():
    h = Harness()
    replies = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", extra=[(2048, b"x")]))
    assert [r.code_str for r in replies] == ["2.01"]


def test_w3_proxy_uri_gets_5_05_and_non_request_gets_non_reply():
    h = Harness()
    replies = h.feed(raw.request(raw.GET, "/x", mtype=raw.NON, extra=[(35, b"coap://a/")]))
    assert [(r.mtype, r.code_str) for r in replies] == [(raw.NON, "5.05")]


def test_w5_slow_answer_gets_empty_ack_without_token_then_separate_con():
    pending = defer.Deferred()
    h = Harness(handler=lambda request: pending)
    assert h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=77)) == []
    h.clock.advance(0.5)
    ack = h.transport.pop()
    assert [(a.mtype, a.code, a.mid, a.token, a.options) for a in ack] == [(raw.ACK, 0, 77, b"", [])]
    pending.callback(edge.make_response(codes.CREATED))
    [separate] = h.transport.pop()
    assert (separate.mtype, separate.code_str, separate.token) == (raw.CON, "2.01", b"\x01\x02")
    assert separate.mid != 77
    h.feed(raw.Msg(raw.ACK, 0, separate.mid))  # stop txThings' retransmission


def test_w5_one_timer_serves_every_waiting_request_each_acked_at_its_own_deadline():
    answers = {}

    def slow(request):
        answers[request.mid] = defer.Deferred()
        return answers[request.mid]
    h = Harness(handler=slow)
    sent = []  # (time in eighths of a second, mtype, code, mid)

    def step(eighths):
        for _ in range(eighths):
            h.clock.advance(0.125)
            sent.extend((round(h.clock.seconds() * 8), r.mtype, r.code, r.mid)
                        for r in h.transport.pop())
    for mid in range(10, 15):  # every 1/8 s: each due for an empty ACK 0.5 s later
        sent.extend((round(h.clock.seconds() * 8), r.mtype, r.code, r.mid)
                    for r in h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=mid)))
        assert len(h.clock.getDelayedCalls()) == 1  # the transport's one timer
        step(1)
    answers[12].callback(edge.make_response(codes.CREATED))  # at 5/8 s, due at 6/8: in time
    assert [(r.mtype, r.code_str, r.mid) for r in h.transport.pop()] == [(raw.ACK, "2.01", 12)]
    step(6)
    assert sent == [(4, raw.ACK, 0, 10), (5, raw.ACK, 0, 11), (7, raw.ACK, 0, 13),
                    (8, raw.ACK, 0, 14)]
    assert h.protocol.endpoint.next_timer() > h.clock.seconds()  # nobody waits: no wake-up due
    for mid in (10, 14):  # late answers go as separate CON responses
        answers[mid].callback(edge.make_response(codes.CREATED))
        [separate] = h.transport.pop()
        assert (separate.mtype, separate.code_str) == (raw.CON, "2.01")
        h.feed(raw.Msg(raw.ACK, 0, separate.mid))


def test_w5_no_timer_is_left_once_the_protocol_stops():
    h = Harness(handler=lambda request: defer.Deferred())
    h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=3))
    assert len(h.clock.getDelayedCalls()) == 1
    h.protocol.stopProtocol()
    assert h.clock.getDelayedCalls() == []


def test_w5_non_request_never_gets_an_ack():
    pending = defer.Deferred()
    h = Harness(handler=lambda request: pending)
    h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mtype=raw.NON))
    h.clock.advance(2)
    assert h.transport.pop() == []
    pending.callback(edge.make_response(codes.CREATED))
    assert [(r.mtype, r.code_str) for r in h.transport.pop()] == [(raw.NON, "2.01")]


def test_fast_answer_is_piggybacked_in_the_ack():
    h = Harness()
    replies = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=78))
    assert [(r.mtype, r.code_str, r.mid) for r in replies] == [(raw.ACK, "2.01", 78)]
    h.clock.advance(1)
    assert h.transport.pop() == []


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


def test_w5_slow_get_is_answered_in_its_ack_so_libcoap_takes_a_first_block():
    # libcoap before 4.3.5 drops the first block of a body in a separate response
    body = b"f" * 3000
    pending = defer.Deferred()
    h = Harness(handler=lambda request: pending)
    h.protocol.endpoint.verify(PEER)
    assert h.feed(raw.request(raw.GET, "/fw/t", mid=40, extra=[(raw.BLOCK2, bytes([0x06]))])) == []
    h.clock.advance(5)  # the client retransmits meanwhile: a duplicate, ignored
    assert h.transport.pop() == []
    assert h.feed(raw.request(raw.GET, "/fw/t", mid=40, extra=[(raw.BLOCK2, bytes([0x06]))])) == []
    pending.callback(edge.make_response(codes.CONTENT, body))
    [first] = h.transport.pop()
    assert (first.mtype, first.mid, first.code_str, first.payload) == (raw.ACK, 40, "2.05",
                                                                        body[:1024])
    assert first.uint(raw.BLOCK2) >> 4 == 0 and first.uint(raw.BLOCK2) & 8
    # a later duplicate gets the same answer
    [again] = h.feed(raw.request(raw.GET, "/fw/t", mid=40, extra=[(raw.BLOCK2, bytes([0x06]))]))
    assert (again.mtype, again.mid, again.payload) == (raw.ACK, 40, body[:1024])


def test_w5_a_block_get_unanswered_for_its_ack_delay_gets_its_empty_ack_and_posts_keep_theirs():
    answers = {}

    def slow(request):
        answers[request.mid] = defer.Deferred()
        return answers[request.mid]
    h = Harness(handler=slow)
    h.feed(raw.request(raw.GET, "/fw/t", mid=50, extra=[(raw.BLOCK2, bytes([0x06]))]))
    h.clock.advance(1)
    h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=51))  # due before the GET
    h.clock.advance(0.5)
    assert [(r.mtype, r.code, r.mid) for r in h.transport.pop()] == [(raw.ACK, 0, 51)]
    h.clock.advance(BLOCK_GET_ACK_DELAY - 1.5 - 0.01)
    assert h.transport.pop() == []
    h.clock.advance(0.02)
    assert [(r.mtype, r.code, r.mid) for r in h.transport.pop()] == [(raw.ACK, 0, 50)]
    answers[50].callback(edge.make_response(codes.CONTENT, b"{}"))
    [separate] = h.transport.pop()
    assert (separate.mtype, separate.code_str) == (raw.CON, "2.05")
    h.feed(raw.Msg(raw.ACK, 0, separate.mid))


@pytest.mark.parametrize("code,max_age", [(codes.TOO_MANY_REQUESTS, 7), (codes.UNAUTHORIZED, None),
                                          (codes.BAD_REQUEST, None),
                                          (codes.SERVICE_UNAVAILABLE, 1)],
                         ids=["4.29", "4.01", "4.00", "5.03"])
def test_an_error_answer_to_a_later_block_passes_through_unchanged(code, max_age):
    h = verified(Harness(handler=lambda request: defer.succeed(edge.make_response(
        code, b"no", codes.TEXT_PLAIN, max_age=max_age))))
    [reply] = h.feed(raw.request(raw.GET, "/fw/t", mid=60, extra=[(raw.BLOCK2, bytes([0x56]))]))
    assert reply.code_str == codes.dotted(code) and reply.payload == b"no"
    assert reply.option(raw.BLOCK2) is None
    assert reply.uint(14) == max_age  # Max-Age (RFC 8516: when to try again)


def verified(h, peer=PEER):
    h.protocol.endpoint.verify((peer[0], peer[1]))
    return h


def test_w7_responses_up_to_1024_bytes_are_one_datagram_and_larger_use_1024_byte_blocks():
    body = b"x" * 1500
    h = verified(Harness(handler=lambda request: defer.succeed(
        edge.make_response(codes.CONTENT, body))))
    [small] = verified(Harness(handler=lambda r: defer.succeed(
        edge.make_response(codes.CONTENT, b"y" * 1000)))).feed(raw.request(raw.GET, "/s"))
    assert small.payload == b"y" * 1000 and small.option(raw.BLOCK2) is None
    [first] = h.feed(raw.request(raw.GET, "/b", mid=1))
    block2 = first.uint(raw.BLOCK2)
    assert (block2 >> 4, bool(block2 & 8), block2 & 7) == (0, True, 6)
    assert len(first.payload) == 1024 and first.uint(28) == 1500  # Size2 on the first block


def test_block2_random_access_returns_the_block_asked_for():
    body = bytes(range(256)) * 8  # 2048 bytes
    h = verified(Harness(handler=lambda request: defer.succeed(
        edge.make_response(codes.CONTENT, body))))
    [third] = h.feed(raw.request(raw.GET, "/b", mid=2, extra=[(raw.BLOCK2, bytes([0x22]))]))
    block2 = third.uint(raw.BLOCK2)
    assert (block2 >> 4, block2 & 7) == (2, 2) and third.payload == body[128:192]
    [past] = h.feed(raw.request(raw.GET, "/b", mid=3, extra=[(raw.BLOCK2, bytes([0xF6]))]))
    assert past.code_str == "4.02"


def test_blocks_of_one_body_carry_one_etag_and_another_body_another():
    bodies = [b"a" * 1500]
    h = verified(Harness(handler=lambda request: defer.succeed(
        edge.make_response(codes.CONTENT, bodies[0]))))
    [first] = h.feed(raw.request(raw.GET, "/b", mid=7))
    [second] = h.feed(raw.request(raw.GET, "/b", mid=8, extra=[(raw.BLOCK2, bytes([0x16]))]))
    assert first.option(ETAG) and first.option(ETAG) == second.option(ETAG)
    assert first.payload + second.payload == bodies[0]
    bodies[0] = b"b" * 1500
    [changed] = h.feed(raw.request(raw.GET, "/b", mid=9, extra=[(raw.BLOCK2, bytes([0x16]))]))
    assert changed.option(ETAG) != first.option(ETAG)  # the client sees the change


def test_a_notification_longer_than_its_block_goes_as_the_first_block_with_etag_and_size2():
    body = b'{"note":"' + b"n" * 1500 + b'"}'
    h = verified(Harness(handler=lambda request: defer.succeed(
        edge.make_response(codes.CONTENT, body))))
    h.protocol.notify(1, PEER, b"\x0a", False, codes.CONTENT, body, 12)
    [first] = h.transport.pop()
    assert (first.mtype, first.token, first.uint(OBSERVE)) == (raw.NON, b"\x0a", 12)
    block2 = first.uint(raw.BLOCK2)
    assert (block2 >> 4, bool(block2 & 8), block2 & 7) == (0, True, 6)
    assert first.payload == body[:1024] and first.uint(28) == len(body)
    # the device GETs block 1; the core answers with the same body, cut by the engine
    [rest] = h.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=10,
                                extra=[(raw.BLOCK2, bytes([0x16]))]))
    assert rest.option(ETAG) == first.option(ETAG) and first.payload + rest.payload == body
    h.protocol.notify(2, PEER, b"\x0a", False, codes.CONTENT, body[:64], 13, 32)
    [small] = h.transport.pop()
    assert small.uint(raw.BLOCK2) == (0 << 4) | 8 | 1 and small.payload == body[:32]
    h.protocol.notify(3, PEER, b"\x0a", False, codes.CONTENT, b'{"s":1}', 14)
    [short] = h.transport.pop()
    assert short.option(raw.BLOCK2) is None and short.option(ETAG) is None


def test_unverified_peer_gets_at_most_three_times_its_request_until_it_asks_for_more():
    body = b"z" * 3000
    h = Harness(handler=lambda request: defer.succeed(edge.make_response(codes.CONTENT, body)))
    request = raw.request(raw.GET, "/api/v1/t/attributes", mid=4)
    [first] = h.feed(request)
    assert len(raw.encode(first)) <= 3 * len(raw.encode(request))
    block2 = first.uint(raw.BLOCK2)
    assert block2 & 8 and block2 >> 4 == 0  # more to come, in small blocks
    szx = block2 & 7
    h.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=5,
                       extra=[(raw.BLOCK2, bytes([(1 << 4) | szx]))]))
    [big] = h.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=6))
    assert len(big.payload) == 1024  # verified now: full-size blocks


def test_w9_listen_uses_a_65535_byte_receive_buffer():
    calls = []

    class RecordingReactor:
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            calls.append((port, interface, maxPacketSize))

    edge.listen(RecordingReactor(), Harness().protocol, 5683, "::")
    assert calls == [(5683, "::", 65535)]  # Twisted's default of 8192 truncates datagrams


def test_w10_duplicate_con_gets_cached_response_and_is_processed_once():
    h = Harness()
    first = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=42))
    again = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=42))
    assert [r.code_str for r in first] == ["2.01"]
    assert raw.encode(again[0]) == raw.encode(first[0])
    assert len(h.calls) == 1
    other_peer = h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=42),
                        peer=("127.0.0.1", 40001))
    assert [r.code_str for r in other_peer] == ["2.01"] and len(h.calls) == 2


@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="only CPython's collector leaves untracked objects alone")
def test_w10_dedup_entries_are_out_of_the_garbage_collectors_sight():
    # millions of tracked entries made every full collection walk them all: 60-120 ms
    # pauses in a long benchmark run (p99 at half load 63 ms, now 2 ms)
    import gc
    h = Harness()
    for mid in range(300):
        h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=mid),
               peer=("127.0.0.1", 40000 + mid % 7))
        if mid % 100 == 99:
            h.clock.advance(6.0)  # a new bucket
    h.protocol.endpoint.handle_timer(h.clock.seconds())
    gc.collect()
    dedup = h.protocol.endpoint.dedup
    assert len(dedup) == 300
    assert not any(gc.is_tracked(shard) for shard in dedup._shards)
    closed = [keys for _, keys, _ in dedup._buckets]
    assert len(closed) >= 2 and not any(gc.is_tracked(keys) for keys in closed)


def test_w10_dedup_never_rebuilds_one_huge_dict():
    # one dict of three million keys coming and going rebuilt itself now and then: a
    # 0.5 s stop of everything; spread over shards, no dict holds more than a few
    from bridge.coap.dedup import Deduplicator
    dedup = Deduplicator(247.0)
    keys = [dedup.slot(n & 0xFFFF, ("10.0.%d.%d" % (n >> 8, n & 255), 5683)) for n in range(20000)]
    for n, key in enumerate(keys):
        assert not dedup.seen(key, n / 1000.0)
        dedup.remember_response(key, b"answer %d" % n)
    assert dedup.seen(keys[123], 20.0) and dedup.response(keys[123]) == b"answer 123"
    sizes = [len(shard) for shard in dedup._shards]
    assert sum(sizes) == 20000 and max(sizes) < 20000 / Deduplicator.SHARDS * 2


def test_w10_duplicate_non_is_dropped():
    h = Harness()
    h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mtype=raw.NON, mid=3))
    assert h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mtype=raw.NON, mid=3)) == []
    assert len(h.calls) == 1


def test_w10_dedup_keeps_no_timer_per_datagram_and_forgets_after_the_lifetime():
    h = Harness()
    for mid in range(500):
        h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=mid))
    assert len(h.clock.getDelayedCalls()) == 1  # the transport's one timer
    assert len(h.protocol.endpoint.dedup) == 500
    assert all(isinstance(v, bytes) for v in h.protocol.endpoint.dedup.responses())
    h.clock.pump([5.0] * 49)  # 245 s: still within EXCHANGE_LIFETIME
    assert len(h.protocol.endpoint.dedup) == 500
    h.clock.pump([5.0] * 3)  # 260 s: past the lifetime plus one bucket
    assert len(h.protocol.endpoint.dedup) == 0
    assert len(h.feed(raw.request(raw.POST, "/api/v1/t/telemetry", b"{}", mid=1))) == 1
    assert len(h.calls) == 501
