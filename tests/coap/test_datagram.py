"""The datagram message layer (bridge/coap/datagram.py) with datagrams and explicit times:
no reactor, no sockets. Regression tests of the txThings defects it fixes are named by
their numbers (../shared/spec/txthings-notes.md)."""

import dataclasses
import gc
import platform

import pytest

import coapraw as raw
from bridge.coap.datagram import (ACK_RANDOM_FACTOR, BLOCK_GET_ACK_DELAY, Observation)
from bridge.coap.dedup import Deduplicator
from bridge.coap.exchange import Incoming, Notified, Transmit
from bridge.core import codes
from coaplayer import PEER, Layer

ETAG, OBSERVE, SIZE2 = 4, 6, 28
UPLINK = "/api/v1/t/telemetry"


def post(mid=0x1234, mtype=raw.CON, **kwargs):
    return raw.request(raw.POST, UPLINK, b"{}", mtype=mtype, mid=mid, **kwargs)


# -- W2: malformed datagrams ----------------------------------------------------------------

@pytest.mark.parametrize("datagram", [b"", b"\x40", b"\x40\x01\x00", b"\x80\x01\x00\x01",
                                      b"\x00\x01\x00\x01"],
                         ids=["empty", "1-byte", "3-byte", "version-2", "version-0"])
def test_w2_short_or_wrong_version_datagrams_are_dropped_silently(datagram):
    layer = Layer()
    assert layer.feed(datagram) == [] and layer.requests == []
    assert layer.layer.malformed == 1


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
def test_w2_malformed_con_gets_rst_and_is_counted(datagram):
    layer = Layer()
    replies = layer.feed(datagram)
    assert [(r.mtype, r.code, r.mid, r.token) for r in replies] == [(raw.RST, 0, 7, b"")]
    assert layer.requests == [] and layer.layer.malformed == 1


def test_w2_malformed_non_is_dropped_and_valid_requests_still_answered():
    layer = Layer()
    assert layer.feed(bytes([0x59, 0x01, 0x00, 0x08]) + b"123456789") == []
    replies = layer.answer(post(mid=9), codes.CREATED)
    assert [(r.mtype, r.code_str, r.mid) for r in replies] == [(raw.ACK, "2.01", 9)]


def test_w2_request_code_in_an_ack_is_ignored():
    layer = Layer()
    assert layer.feed(raw.Msg(raw.ACK, raw.GET, 5, b"", raw.path_options("/a"))) == []
    assert layer.requests == [] and layer.layer.malformed == 1


def test_an_unexpected_response_and_a_con_ping_get_rst():
    layer = Layer()
    [rst] = layer.feed(raw.Msg(raw.CON, 69, 11, b"\x01"))
    [pong] = layer.feed(raw.Msg(raw.CON, 0, 12))
    assert [(m.mtype, m.code, m.mid) for m in (rst, pong)] == [(raw.RST, 0, 11), (raw.RST, 0, 12)]
    assert layer.feed(raw.Msg(raw.CON, 0, 12)) == [pong]  # a duplicate: the same answer


# -- W3: options --------------------------------------------------------------------------

def test_w3_unknown_critical_option_gets_4_02_and_reaches_no_one():
    layer = Layer()
    replies = layer.feed(post(extra=[(2049, b"x")]))
    assert [(r.mtype, r.code_str, r.token) for r in replies] == [(raw.ACK, "4.02", b"\x01\x02")]
    assert b"2049" in replies[0].payload and layer.requests == []


def test_w3_unknown_elective_option_is_ignored():
    replies = Layer().answer(post(extra=[(2048, b"x")]), codes.CREATED)
    assert [r.code_str for r in replies] == ["2.01"]


def test_w3_proxy_uri_gets_5_05_and_non_request_gets_non_reply():
    replies = Layer().feed(raw.request(raw.GET, "/x", mtype=raw.NON, extra=[(35, b"coap://a/")]))
    assert [(r.mtype, r.code_str) for r in replies] == [(raw.NON, "5.05")]


# -- W5: piggybacked, empty ACK, separate -----------------------------------------------------

def test_a_request_answered_in_time_gets_a_piggybacked_ack():
    layer = Layer(now=1.0)
    layer.feed(raw.request(raw.POST, "/a", b"{}", mid=5))
    incoming = layer.request()
    assert isinstance(incoming, Incoming) and incoming.message.payload == b"{}"
    [ack] = layer.respond(incoming, codes.CREATED, now=1.1)
    assert (ack.mtype, ack.code_str, ack.mid, ack.token) == (raw.ACK, "2.01", 5, b"\x01\x02")
    assert layer.until(10.0) == []


def test_w5_slow_answer_gets_empty_ack_without_token_then_a_retransmitted_separate_con():
    layer = Layer(empty_ack_delay=0.5, ack_timeout=2.0, max_retransmit=1)
    layer.feed(raw.request(raw.GET, "/a", mid=6))
    incoming = layer.request()
    assert layer.layer.next_timer() <= 0.5
    [(when, empty)] = layer.until(0.9)
    assert when == 0.5
    assert (empty.mtype, empty.code, empty.mid, empty.token, empty.options) == (
        raw.ACK, 0, 6, b"", [])
    [separate] = layer.respond(incoming, codes.CONTENT, b"x", now=1.0)
    assert (separate.mtype, separate.code_str, separate.token) == (raw.CON, "2.05", b"\x01\x02")
    assert separate.mid != 6
    [(when, again)] = layer.until(1.0 + 2.0 * ACK_RANDOM_FACTOR)
    assert again == separate and 3.0 <= when <= 1.0 + 2.0 * ACK_RANDOM_FACTOR
    layer.feed(raw.Msg(raw.ACK, 0, separate.mid), now=when + 0.1)
    assert layer.until(100.0) == []  # acknowledged: nothing more goes out


def test_w5_every_waiting_request_gets_its_empty_ack_at_its_own_deadline():
    layer = Layer()
    waiting = {}
    timed = []
    for n, mid in enumerate(range(10, 15)):  # every 1/8 s: each due 0.5 s after it came
        timed += layer.until(n / 8)
        layer.feed(post(mid=mid), now=n / 8)
        waiting[mid] = layer.request()
    timed += layer.until(5 / 8)
    [piggybacked] = layer.respond(waiting[12], codes.CREATED, now=5 / 8)  # due at 6/8: in time
    assert (piggybacked.mtype, piggybacked.code_str, piggybacked.mid) == (raw.ACK, "2.01", 12)
    timed += layer.until(2.0)
    sent = [(round(when * 8), m.mtype, m.code, m.mid) for when, m in timed]
    assert sent == [(4, raw.ACK, 0, 10), (5, raw.ACK, 0, 11), (7, raw.ACK, 0, 13),
                    (8, raw.ACK, 0, 14)]
    for mid in (10, 14):  # late answers go as separate CON responses
        [separate] = layer.respond(waiting[mid], codes.CREATED)
        assert (separate.mtype, separate.code_str) == (raw.CON, "2.01")


def test_w5_non_request_never_gets_an_ack_and_its_answer_is_non():
    layer = Layer()
    layer.feed(post(mtype=raw.NON))
    incoming = layer.request()
    assert layer.until(2.0) == []
    [answer] = layer.respond(incoming, codes.CREATED)
    assert (answer.mtype, answer.code_str) == (raw.NON, "2.01")


def test_a_request_is_answered_once():
    layer = Layer()
    layer.feed(post(mid=3))
    incoming = layer.request()
    [first] = layer.respond(incoming, codes.CREATED)
    assert layer.respond(incoming, codes.INTERNAL_SERVER_ERROR) == []
    layer.layer.refuse(incoming, codes.INTERNAL_SERVER_ERROR, b"late", 0.0)
    assert layer.events() == [] and first.code_str == "2.01"


def test_w5_slow_get_of_a_block_is_answered_in_its_ack_so_libcoap_takes_a_first_block():
    # libcoap before 4.3.5 drops the first block of a body in a separate response
    body = b"f" * 3000
    layer = Layer().verify()
    get = raw.request(raw.GET, "/fw/t", mid=40, extra=[(raw.BLOCK2, bytes([0x06]))])
    assert layer.feed(get) == []
    incoming = layer.request()
    assert layer.until(5.0) == []
    assert layer.feed(get) == []  # the client's retransmission: a duplicate, ignored
    [first] = layer.respond(incoming, codes.CONTENT, body)
    assert (first.mtype, first.mid, first.code_str, first.payload) == (raw.ACK, 40, "2.05",
                                                                        body[:1024])
    assert first.uint(raw.BLOCK2) >> 4 == 0 and first.uint(raw.BLOCK2) & 8
    [again] = layer.feed(get)  # a later duplicate gets the same answer
    assert (again.mtype, again.mid, again.payload) == (raw.ACK, 40, body[:1024])


def test_w5_a_block_get_unanswered_for_its_delay_gets_its_empty_ack_and_posts_keep_theirs():
    layer = Layer()
    layer.feed(raw.request(raw.GET, "/fw/t", mid=50, extra=[(raw.BLOCK2, bytes([0x06]))]))
    get = layer.request()
    layer.feed(post(mid=51), now=1.0)  # due before the GET
    layer.request()
    sent = [(when, m.mtype, m.code, m.mid) for when, m in layer.until(BLOCK_GET_ACK_DELAY + 1)]
    assert sent == [(1.5, raw.ACK, 0, 51), (BLOCK_GET_ACK_DELAY, raw.ACK, 0, 50)]
    [separate] = layer.respond(get, codes.CONTENT, b"{}")
    assert (separate.mtype, separate.code_str) == (raw.CON, "2.05")


# -- W7, Block2, amplification ------------------------------------------------------------------

def test_w7_answers_up_to_1024_bytes_are_one_datagram_and_longer_ones_1024_byte_blocks():
    layer = Layer().verify()
    [small] = layer.answer(raw.request(raw.GET, "/s", mid=1), codes.CONTENT, b"y" * 1000)
    assert small.payload == b"y" * 1000 and small.option(raw.BLOCK2) is None
    [first] = layer.answer(raw.request(raw.GET, "/b", mid=2), codes.CONTENT, b"x" * 1500)
    block2 = first.uint(raw.BLOCK2)
    assert (block2 >> 4, bool(block2 & 8), block2 & 7) == (0, True, 6)
    assert len(first.payload) == 1024 and first.uint(SIZE2) == 1500


def test_an_error_answer_to_a_later_block_passes_through_unchanged():
    for code, max_age in [(codes.TOO_MANY_REQUESTS, 7), (codes.UNAUTHORIZED, None),
                          (codes.SERVICE_UNAVAILABLE, 1)]:
        [reply] = Layer().verify().answer(
            raw.request(raw.GET, "/fw/t", mid=60, extra=[(raw.BLOCK2, bytes([0x56]))]), code,
            b"no", content_format=codes.TEXT_PLAIN, max_age=max_age)
        assert reply.code_str == codes.dotted(code) and reply.payload == b"no"
        assert reply.option(raw.BLOCK2) is None
        assert reply.uint(14) == max_age  # Max-Age (RFC 8516: when to try again)


def test_an_unverified_peer_gets_at_most_three_times_its_request_until_it_asks_for_more():
    layer = Layer()
    body = b"z" * 3000
    request = raw.request(raw.GET, "/api/v1/t/attributes", mid=4)
    [first] = layer.answer(request, codes.CONTENT, body)
    assert len(raw.encode(first)) <= 3 * len(raw.encode(request))
    block2 = first.uint(raw.BLOCK2)
    assert block2 & 8 and block2 >> 4 == 0  # more to come, in small blocks
    layer.answer(raw.request(raw.GET, "/api/v1/t/attributes", mid=5,
                             extra=[(raw.BLOCK2, bytes([(1 << 4) | (block2 & 7)]))]),
                 codes.CONTENT, body)
    [big] = layer.answer(raw.request(raw.GET, "/api/v1/t/attributes", mid=6), codes.CONTENT,
                         body)
    assert len(big.payload) == 1024  # verified now: full-size blocks


def test_an_authenticated_answer_needs_no_verified_peer():
    layer = Layer()
    layer.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=4))
    [whole] = layer.respond(layer.request(), codes.CONTENT, b"a" * 1000, authenticated=True)
    assert whole.payload == b"a" * 1000


def test_a_peer_that_acknowledges_our_con_is_verified():
    layer = Layer()
    layer.layer.notify(1, PEER, b"\x0a", codes.CONTENT, b"{}", 5, None, 0.0)
    [con] = layer.events()
    assert not layer.layer.verified(PEER)
    layer.feed(raw.Msg(raw.ACK, 0, con.mid))
    assert layer.layer.verified(PEER)
    layer.layer.forget(PEER)
    assert not layer.layer.verified(PEER)


# -- W10: deduplication -------------------------------------------------------------------

def test_w10_duplicate_con_gets_the_cached_answer_and_is_processed_once():
    layer = Layer()
    first = layer.answer(post(mid=42), codes.CREATED)
    again = layer.feed(post(mid=42), now=10.0)
    assert [r.code_str for r in first] == ["2.01"] and again == first and layer.requests == []
    other = layer.answer(post(mid=42), codes.CREATED, peer=("127.0.0.1", 40001))
    assert [r.code_str for r in other] == ["2.01"]  # the same MID from another peer


def test_w10_duplicate_non_is_dropped():
    layer = Layer()
    layer.answer(post(mtype=raw.NON, mid=3), codes.CREATED)
    assert layer.feed(post(mtype=raw.NON, mid=3)) == [] and layer.requests == []


def test_w10_a_duplicate_of_a_request_not_yet_answered_gets_nothing_then_the_answer():
    layer = Layer()
    layer.feed(post(mid=8))
    incoming = layer.request()
    assert layer.feed(post(mid=8)) == [] and layer.requests == []
    [answer] = layer.respond(incoming, codes.CREATED)
    assert layer.feed(post(mid=8)) == [answer]


def test_w10_dedup_forgets_after_the_lifetime():
    layer = Layer()
    for mid in range(500):
        layer.answer(post(mid=mid), codes.CREATED)
    assert len(layer.layer.dedup) == 500
    assert all(isinstance(v, bytes) for v in layer.layer.dedup.responses())
    layer.until(245.0)  # still within EXCHANGE_LIFETIME
    assert len(layer.layer.dedup) == 500
    layer.until(260.0)  # past the lifetime plus one bucket
    assert len(layer.layer.dedup) == 0
    assert len(layer.answer(post(mid=1), codes.CREATED)) == 1  # a new request again


@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="only CPython's collector leaves untracked objects alone")
def test_w10_dedup_entries_are_out_of_the_garbage_collectors_sight():
    # millions of tracked entries made every full collection walk them all: 60-120 ms
    # pauses in a long benchmark run (p99 at half load 63 ms, now 2 ms)
    layer = Layer()
    for mid in range(300):
        layer.answer(post(mid=mid), codes.CREATED, peer=("127.0.0.1", 40000 + mid % 7))
        if mid % 100 == 99:
            layer.until(layer.now + 6.0)  # a new bucket
    gc.collect()
    dedup = layer.layer.dedup
    assert len(dedup) == 300
    assert not any(gc.is_tracked(shard) for shard in dedup._shards)
    closed = [keys for _, keys, _ in dedup._buckets]
    assert len(closed) >= 2 and not any(gc.is_tracked(keys) for keys in closed)


def test_w10_dedup_never_rebuilds_one_huge_dict():
    # one dict of three million keys coming and going rebuilt itself now and then: a
    # 0.5 s stop of everything; spread over shards, no dict holds more than a few
    dedup = Deduplicator(247.0)
    keys = [dedup.slot(n & 0xFFFF, ("10.0.%d.%d" % (n >> 8, n & 255), 5683)) for n in range(20000)]
    for n, key in enumerate(keys):
        assert not dedup.seen(key, n / 1000.0)
        dedup.remember_response(key, b"answer %d" % n)
    assert dedup.seen(keys[123], 20.0) and dedup.response(keys[123]) == b"answer 123"
    sizes = [len(shard) for shard in dedup._shards]
    assert sum(sizes) == 20000 and max(sizes) < 20000 / Deduplicator.SHARDS * 2


# -- notifications: CON or NON, and their fate ---------------------------------------------------

def registration(layer, mtype=raw.CON, mid=20, token=b"\x0a"):
    """An observe registration; returns the ``Observation`` its Incoming carries."""
    layer.feed(raw.request(raw.GET, "/api/v1/t/attributes", mtype=mtype, mid=mid, token=token,
                           extra=[(OBSERVE, b"")]))
    incoming = layer.request()
    layer.respond(incoming, codes.CONTENT, b"{}", observe=1)
    return incoming.observation


def notify(layer, ref, observation, now, payload=b'{"a":1}', **kwargs):
    layer.layer.notify(ref, PEER, b"\x0a", codes.CONTENT, payload, 2 + ref, observation, now,
                       **kwargs)
    layer.now = now
    return layer.events()


def test_a_registration_carries_an_observation_of_its_type_and_other_requests_none():
    layer = Layer(now=5.0)
    con, non = registration(layer), registration(layer, raw.NON, mid=21)
    assert isinstance(con, Observation) and (con.confirmable, con.last_con) == (True, 5.0)
    assert non.confirmable is False
    layer.feed(raw.request(raw.GET, "/api/v1/t/attributes", mid=22, extra=[(OBSERVE, b"\x01")]))
    assert layer.request().observation is None  # a deregistration
    layer.feed(post(mid=23))
    assert layer.request().observation is None


def test_a_con_registration_gets_con_notifications_acknowledged_one_by_one():
    layer = Layer()
    observation = registration(layer)
    [con] = notify(layer, 1, observation, 1.0)
    assert (con.mtype, con.token, con.uint(OBSERVE)) == (raw.CON, b"\x0a", 3)
    assert layer.outcomes == []
    layer.feed(raw.Msg(raw.ACK, 0, con.mid), now=1.5)
    assert layer.outcomes == [(1, "ack")]


def test_a_non_registration_gets_non_notifications_reported_delivered_at_once():
    layer = Layer()
    observation = registration(layer, raw.NON)
    [non] = notify(layer, 1, observation, 1.0)
    assert non.mtype == raw.NON and layer.outcomes == [(1, "delivered")]
    layer.feed(raw.Msg(raw.RST, 0, non.mid), now=2.0)  # the device has forgotten it
    assert layer.outcomes == [(1, "delivered"), (1, "reset")]


def test_a_non_relation_gets_one_con_every_con_interval_so_a_gone_observer_is_found():
    layer = Layer(now=0.0, con_interval=100.0)
    observation = registration(layer, raw.NON)
    kinds = []
    for ref, now in enumerate([99.0, 100.0, 101.0, 199.0, 200.0], start=1):
        [sent] = notify(layer, ref, observation, now)
        kinds.append(sent.mtype)
        if sent.mtype == raw.CON:
            layer.feed(raw.Msg(raw.ACK, 0, sent.mid))
    assert kinds == [raw.NON, raw.CON, raw.NON, raw.NON, raw.CON]
    assert layer.outcomes == [(1, "delivered"), (2, "ack"), (3, "delivered"), (4, "delivered"),
                              (5, "ack")]


def test_a_notification_without_an_observation_goes_con():
    layer = Layer()
    [sent] = notify(layer, 1, None, 1.0)
    assert sent.mtype == raw.CON


def test_a_taken_over_non_relation_sends_its_first_notification_con_then_non_again():
    """A relation restored by a restarted worker: Observation(NON, last CON at -inf)."""
    layer = Layer()
    observation = Observation(False, float("-inf"))
    [first] = notify(layer, 1, observation, 1.0)
    assert first.mtype == raw.CON
    layer.feed(raw.Msg(raw.ACK, 0, first.mid), now=1.5)
    [second] = notify(layer, 2, observation, 2.0)
    assert second.mtype == raw.NON and layer.outcomes == [(1, "ack"), (2, "delivered")]


def test_ending_an_observation_is_a_con_error_without_observe_retransmitted_without_a_fate():
    layer = Layer(ack_timeout=1.0, max_retransmit=2)
    layer.layer.end_observation(PEER, b"\x0e", codes.SERVICE_UNAVAILABLE, b"register again",
                                0.0, max_age=1)
    [ended] = layer.events()
    assert (ended.mtype, ended.code_str, ended.token, ended.payload) == (
        raw.CON, "5.03", b"\x0e", b"register again")
    assert ended.option(OBSERVE) is None  # RFC 7641 §3.2: an error ends the relation
    assert ended.uint(14) == 1  # Max-Age
    copies = [m for _, m in layer.until(100.0)]
    assert len(copies) == 2 and layer.outcomes == []  # retransmitted; nobody waits on it


def test_an_unacknowledged_notification_ends_as_a_timeout_after_max_retransmit():
    layer = Layer(ack_timeout=1.0, max_retransmit=2)
    copies = notify(layer, 42, registration(layer), 0.0)
    copies += [m for _, m in layer.until(100.0)]
    assert layer.outcomes == [(42, "timeout")]
    assert len(copies) == 3 and len({raw.encode(m) for m in copies}) == 1  # 1 + 2 copies


def test_d28_an_ack_from_another_peer_does_not_stop_a_retransmission():
    layer = Layer(ack_timeout=1.0, max_retransmit=1)
    [con] = notify(layer, 7, registration(layer), 0.0)
    layer.feed(raw.Msg(raw.ACK, 0, con.mid), peer=("127.0.0.1", 40001))
    assert layer.outcomes == []
    assert [m for _, m in layer.until(1.6)] == [con]
    layer.feed(raw.Msg(raw.RST, 0, con.mid))
    assert layer.outcomes == [(7, "reset")]


def test_a_notification_longer_than_its_block_goes_as_the_first_block_with_etag_and_size2():
    layer = Layer().verify()
    body = b'{"note":"' + b"n" * 1500 + b'"}'
    [first] = notify(layer, 1, None, 1.0, body)
    block2 = first.uint(raw.BLOCK2)
    assert (block2 >> 4, bool(block2 & 8), block2 & 7) == (0, True, 6)
    assert first.payload == body[:1024] and first.uint(SIZE2) == len(body)
    # the device GETs block 1; the application answers with the same body, cut here
    [rest] = layer.answer(raw.request(raw.GET, "/api/v1/t/attributes", mid=10,
                                      extra=[(raw.BLOCK2, bytes([0x16]))]), codes.CONTENT, body)
    assert rest.option(ETAG) == first.option(ETAG) and first.payload + rest.payload == body
    [small] = notify(layer, 2, None, 2.0, body[:64], block_size=32)
    assert small.uint(raw.BLOCK2) == (0 << 4) | 8 | 1 and small.payload == body[:32]
    [short] = notify(layer, 3, None, 3.0, b'{"s":1}')
    assert short.option(raw.BLOCK2) is None and short.option(ETAG) is None


def test_a_notification_carries_the_content_format_it_is_given():
    layer = Layer()
    observation = registration(layer, raw.NON)
    [short] = notify(layer, 1, observation, 1.0, b"\x0a\x03abc", content_format=42)
    [json_one] = notify(layer, 2, observation, 1.0)
    assert short.uint(raw.CONTENT_FORMAT) == 42 and json_one.uint(raw.CONTENT_FORMAT) == 50


# -- the events themselves ---------------------------------------------------------------------

def test_events_are_immutable_values_handed_out_once_in_order():
    layer = Layer()
    layer.layer.receive_datagram(raw.encode(post(mid=1)), PEER, 0.0)
    layer.layer.receive_datagram(bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789", PEER, 0.0)
    layer.layer.notify(1, PEER, b"\x0a", codes.CONTENT, b"{}", 5, Observation(False, 0.0), 0.0)
    events = []
    while True:
        event = layer.layer.next_event()
        if event is None:
            break
        events.append(event)
    assert [type(e) for e in events] == [Incoming, Transmit, Transmit, Notified]
    for event in events:
        with pytest.raises(AttributeError):
            event.peer = ("10.0.0.1", 1)  # NamedTuples: frozen
    with pytest.raises(AttributeError):
        events[0].message.payload = b"changed"
    assert layer.layer.next_event() is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.layer.settings.ack_timeout = 1.0


def test_w10_dedup_numbers_peers_and_forgets_those_not_seen_for_a_generation():
    dedup = Deduplicator(10.0, bucket=1.0)
    first = dedup.slot(7, ("10.0.0.1", 5683))
    assert dedup.slot(7, ("10.0.0.1", 5683)) == first  # the same peer and mid: one key
    assert dedup.slot(7, ("10.0.0.1", 5684)) != first  # another port: another peer
    assert dedup.slot(8, ("10.0.0.1", 5683))[0] != first[0]

    class Session:
        key = ("dtls", ("10.0.0.1", 5683))
    assert dedup.slot(7, Session()) == dedup.slot(7, Session())  # by the session's key
    assert not dedup.seen(first, 0.0)
    dedup.remember_response(first, b"ack")
    for now in range(1, 40):  # the peer keeps talking: its number stays
        dedup.sweep(float(now))
        if now < 10:
            assert dedup.slot(7, ("10.0.0.1", 5683)) == first
            assert dedup.seen(first, float(now)) and dedup.response(first) == b"ack"
    # gone for over two generations: forgotten, and its entries expired before that
    assert len(dedup) == 0 and len(dedup._peers) + len(dedup._older_peers) == 0
    again = dedup.slot(7, ("10.0.0.1", 5683))
    assert again != first and not dedup.seen(again, 40.0)  # a new number, never reused


def test_w10_many_peers_first_message_ids_spread_over_the_shards():
    dedup = Deduplicator(247.0)
    for n in range(20000):  # devices just booted: every one sends mid 1 first
        assert not dedup.seen(dedup.slot(1, ("10.1.%d.%d" % (n >> 8, n & 255), 5683)), 0.0)
    sizes = [len(shard) for shard in dedup._shards]
    assert max(sizes) < 20000 / Deduplicator.SHARDS * 1.5


# -- power saving and quiet answers ---------------------------------------------------------

def test_retransmissions_are_counted():
    layer = Layer(ack_timeout=1.0, max_retransmit=2)
    notify(layer, 42, registration(layer), 0.0)
    layer.until(100.0)
    assert layer.outcomes == [(42, "timeout")] and layer.layer.retransmissions == 2


def test_a_withdrawn_notification_is_not_sent_again_and_its_fate_is_withdrawn():
    """Its PSM device fell asleep (bridge/core/power.py): no retransmission into the void."""
    layer = Layer(ack_timeout=1.0, max_retransmit=4)
    notify(layer, 42, registration(layer), 0.0)
    assert layer.layer.withdraw(42, ("10.9.9.9", 1)) is False  # not that peer's
    assert layer.layer.withdraw(42, PEER) is True and layer.layer.withdraw(42, PEER) is False
    assert layer.until(200.0) == [] and layer.outcomes == [(42, "withdrawn")]
    assert layer.layer.retransmissions == 0


def test_an_ack_of_a_withdrawn_notification_that_comes_after_all_is_reported():
    """The device acknowledged it just before it slept; the ACK came after the withdrawal:
    it was heard ("ack" under the same ref), and the device must not get it twice."""
    layer = Layer(ack_timeout=1.0, max_retransmit=4)
    [con] = notify(layer, 44, registration(layer), 0.0)
    assert layer.layer.withdraw(44, PEER) is True
    layer.feed(raw.Msg(raw.ACK, 0, con.mid), now=0.3)
    assert layer.outcomes == [(44, "withdrawn"), (44, "ack")]
    layer.feed(raw.Msg(raw.ACK, 0, con.mid), now=0.4)  # once
    assert layer.outcomes == [(44, "withdrawn"), (44, "ack")]


def test_an_acknowledged_notification_cannot_be_withdrawn():
    layer = Layer(ack_timeout=1.0, max_retransmit=4)
    [con] = notify(layer, 43, registration(layer), 0.0)
    layer.feed(raw.Msg(raw.ACK, 0, con.mid), now=0.5)
    assert layer.layer.withdraw(43, PEER) is False
    assert layer.outcomes == [(43, "ack")]


def test_a_quiet_answer_goes_to_a_con_request_and_not_to_a_non_one():
    """RFC 7967's No-Response for a success, as Efento's sensors want it (core Reply.quiet)."""
    from bridge.coap.exchange import Answer
    from bridge.coap.message import make_response
    layer = Layer()
    for mtype, mid in ((raw.NON, 31), (raw.CON, 32)):
        layer.feed(post(mid=mid, mtype=mtype))
        layer.layer.respond(layer.request(), Answer(make_response(codes.CREATED), quiet=True),
                            0.1)
        sent = layer.events()
        if mtype == raw.NON:
            assert sent == [] and layer.until(10.0) == []  # nothing at all, not even later
        else:
            [ack] = sent
            assert (ack.mtype, ack.code_str, ack.mid) == (raw.ACK, "2.01", 32)
