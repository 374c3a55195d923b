"""The RFC 8323 connection state machine and signalling, driven by bytes and times only."""

import pytest

from bridge.coap import signalling as sig
from bridge.coap.framing import Frame, StreamDecoder, encode, encode_ws
from bridge.coap.reliable import Connection, Ended, ReliableSettings, Received, TooLarge

GET, POST, CONTENT = 0x01, 0x02, 0x45
SETTINGS = ReliableSettings(max_message_size=2048, csm_timeout=5.0, keepalive=30.0,
                            idle_timeout=100.0)


def frames(connection):
    decoder = StreamDecoder(1 << 20)
    return [f for data in connection.data_to_send() for f in decoder.feed(data)]


def signals(connection):
    return [sig.parse(f) for f in frames(connection) if f.code >> 5 == 7]


def csm(size=1152, block_wise=False, extra=()):
    return encode(sig.CSM, b"", sig.encode_options(
        [(sig.MAX_MESSAGE_SIZE, sig.uint(size))] + ([(sig.BLOCK_WISE_TRANSFER, b"")]
                                                     if block_wise else []) + list(extra)))


def opened(settings=SETTINGS, peer_csm=True):
    connection = Connection(settings, 0.0)
    connection.data_to_send()
    if peer_csm:
        assert connection.receive_data(csm(), 0.0) == []
    return connection


def aborted_with(connection, events, text):
    assert events and isinstance(events[-1], Ended) and events[-1].error
    assert text in events[-1].reason
    abort = signals(connection)[-1]
    assert abort.code == sig.ABORT and text in abort.payload.decode()
    assert connection.ended is not None
    return abort


def test_bridge_sends_its_csm_first():
    connection = Connection(ReliableSettings(max_message_size=4096, block_wise=True), 0.0)
    out = frames(connection)
    assert len(out) == 1
    first = sig.parse(out[0])
    assert first.code == sig.CSM
    assert first.uint(sig.MAX_MESSAGE_SIZE) == 4096 and first.has(sig.BLOCK_WISE_TRANSFER)


def test_csm_offers_block_wise_by_default_and_not_when_turned_off():
    assert sig.parse(frames(Connection(ReliableSettings(), 0.0))[0]).has(
        sig.BLOCK_WISE_TRANSFER)
    first = sig.parse(frames(Connection(ReliableSettings(block_wise=False), 0.0))[0])
    assert not first.has(sig.BLOCK_WISE_TRANSFER)


@pytest.mark.parametrize("ours, theirs, block_wise, bert", [
    (2048, 1153, True, True),  # both over 1152 with Block-Wise-Transfer: BERT
    (2048, 1152, True, False),  # the peer's size is the base value: blocks, no BERT
    (1152, 8000, True, False),  # ours is: no BERT either
    (2048, 8000, False, False),  # the peer offers no Block-Wise-Transfer
])
def test_bert_is_on_only_when_both_csms_offer_it(ours, theirs, block_wise, bert):
    connection = opened(ReliableSettings(max_message_size=ours), peer_csm=False)
    assert not connection.bert  # nothing is known before the peer's CSM
    connection.receive_data(csm(theirs, block_wise=block_wise), 0.0)
    assert connection.bert is bert


def test_peer_csm_sets_its_limits():
    connection = opened(peer_csm=False)
    assert connection.peer_max_message_size == 1152  # the base value until its CSM
    connection.receive_data(csm(8000, block_wise=True), 1.0)
    assert connection.peer_csm
    assert connection.peer_max_message_size == 8000 and connection.peer_block_wise


def test_request_before_the_peers_csm_aborts():
    connection = opened(peer_csm=False)
    events = connection.receive_data(encode(POST, b"t", b"\xff{}"), 0.0)
    aborted_with(connection, events, "a request before the peer's CSM")
    assert not any(isinstance(e, Received) for e in events)


def test_ping_before_the_peers_csm_aborts():
    connection = opened(peer_csm=False)
    aborted_with(connection, connection.receive_data(encode(sig.PING, b"", b""), 0.0),
                 "Ping before the peer's CSM")


def test_empty_messages_are_ignored_even_before_the_csm():
    connection = opened(peer_csm=False)
    assert connection.receive_data(encode(0, b"", b""), 0.0) == []
    assert connection.ended is None


def test_no_csm_in_time_aborts():
    connection = opened(peer_csm=False)
    assert connection.next_timer() == 5.0
    assert connection.handle_timer(4.9) == []
    aborted_with(connection, connection.handle_timer(5.0), "no CSM within 5 s")
    assert connection.next_timer() is None


def test_request_after_csm_is_handed_out():
    connection = opened()
    events = connection.receive_data(encode(POST, b"tk", b"\xb3api\xff{}"), 1.0)
    assert events == [Received(Frame(POST, b"tk", b"\xb3api\xff{}"))]


def test_responses_from_the_peer_are_handed_to_the_layer_above():
    connection = opened()
    assert connection.receive_data(encode(CONTENT, b"x", b""), 1.0) == [
        Received(Frame(CONTENT, b"x", b""))]
    assert connection.ended is None


@pytest.mark.parametrize("code", [0x20, 0x61, 0xC0])  # 1.00, 3.01, 6.00: reserved
def test_reserved_code_classes_abort(code):
    connection = opened()
    aborted_with(connection, connection.receive_data(encode(code, b"", b""), 1.0), "reserved code")


def test_unknown_signalling_code_aborts():
    connection = opened()
    aborted_with(connection, connection.receive_data(encode(0xE6, b"", b""), 1.0),
                 "unknown signalling code 7.06")


def test_unknown_critical_csm_option_aborts_naming_it():
    connection = opened(peer_csm=False)
    events = connection.receive_data(csm(extra=[(9, b"")]), 0.0)
    abort = aborted_with(connection, events, "unknown critical option 9 in CSM")
    assert abort.uint(sig.BAD_CSM_OPTION) == 9


def test_unknown_elective_csm_option_is_ignored():
    connection = opened(peer_csm=False)
    assert connection.receive_data(csm(2000, extra=[(6, b"zz")]), 0.0) == []
    assert connection.peer_csm and connection.peer_max_message_size == 2000


def test_unknown_critical_ping_option_aborts():
    connection = opened()
    ping = encode(sig.PING, b"", sig.encode_options([(3, b"")]))
    aborted_with(connection, connection.receive_data(ping, 1.0), "unknown critical option 3")


def test_csm_option_too_long_aborts():
    connection = opened(peer_csm=False)
    bad = encode(sig.CSM, b"", sig.encode_options([(sig.MAX_MESSAGE_SIZE, b"\x01" * 5)]))
    aborted_with(connection, connection.receive_data(bad, 0.0), "length out of range")


@pytest.mark.parametrize("body, reason", [
    (b"\x2f", "reserved option nibble 15"),
    (b"\x24\x00", "option 2 value truncated"),  # an option past the message
    (b"\xd1", "option extension truncated"),
    (b"\xff", "payload marker without payload"),
])
def test_malformed_signalling_bodies_abort(body, reason):
    connection = opened(peer_csm=False)
    aborted_with(connection, connection.receive_data(encode(sig.CSM, b"", body), 0.0), reason)


def test_reserved_token_length_aborts_and_stops_reading():
    connection = opened()
    events = connection.receive_data(b"\x09\x02" + b"t" * 9 + encode(POST, b"", b""), 1.0)
    aborted_with(connection, events, "token length 9")
    assert connection.receive_data(encode(POST, b"", b""), 2.0) == []


def test_ping_gets_pong_with_its_token():
    connection = opened()
    connection.receive_data(encode(sig.PING, b"pq", b""), 1.0)
    [pong] = signals(connection)
    assert pong.code == sig.PONG and pong.token == b"pq" and not pong.has(sig.CUSTODY)


def test_custody_ping_waits_for_the_requests_before_it():
    connection = opened()
    connection.receive_data(encode(POST, b"a", b"") + encode(GET, b"b", b"")
                            + encode(sig.PING, b"p", sig.encode_options([(sig.CUSTODY, b"")]))
                            + encode(POST, b"c", b""), 1.0)
    assert signals(connection) == []  # two requests before the Ping are unanswered
    connection.send(0x41, b"a", b"")
    assert signals(connection) == []
    connection.send(0x41, b"c", b"")  # after the Ping: does not count
    assert signals(connection) == []
    connection.send(CONTENT, b"b", b"")
    [pong] = signals(connection)
    assert pong.code == sig.PONG and pong.token == b"p" and pong.has(sig.CUSTODY)


def test_custody_ping_with_nothing_pending_is_answered_at_once():
    connection = opened()
    connection.receive_data(encode(sig.PING, b"", sig.encode_options([(sig.CUSTODY, b"")])), 1.0)
    [pong] = signals(connection)
    assert pong.has(sig.CUSTODY)


def test_keepalive_ping_after_silence_then_release_when_the_peer_stays_silent():
    connection = opened()
    assert connection.next_timer() == 30.0
    assert connection.handle_timer(30.0) == []
    [ping] = signals(connection)
    assert ping.code == sig.PING
    assert connection.next_timer() == 60.0
    connection.handle_timer(60.0)
    assert [s.code for s in signals(connection)] == [sig.PING]
    connection.handle_timer(90.0)
    signals(connection)
    assert connection.next_timer() == 100.0
    events = connection.handle_timer(100.0)
    assert events == [Ended("idle for 100 s", False)]
    [release] = signals(connection)
    assert release.code == sig.RELEASE and not release.has(sig.ALTERNATIVE_ADDRESS)


def test_a_pong_keeps_the_connection():
    connection = opened()
    connection.handle_timer(30.0)
    connection.receive_data(encode(sig.PONG, b"", b""), 31.0)
    assert connection.next_timer() == 61.0
    assert connection.handle_timer(99.0) == [] and connection.ended is None


def test_peer_release_ends_once_its_requests_are_answered():
    connection = opened()
    connection.receive_data(encode(POST, b"a", b"") + encode(sig.RELEASE, b"", b""), 1.0)
    assert connection.ended is None
    # no new requests after its Release
    assert connection.receive_data(encode(POST, b"z", b""), 1.5) == []
    events = connection.send(0x41, b"a", b"")
    assert events == [Ended("released by the peer", False)]


def test_peer_release_with_nothing_pending_ends_at_once():
    connection = opened()
    assert connection.receive_data(encode(sig.RELEASE, b"", b""), 1.0) == [
        Ended("released by the peer", False)]


def test_peer_abort_ends_with_its_diagnostic():
    connection = opened()
    events = connection.receive_data(encode(sig.ABORT, b"", sig.abort_body("bye")), 1.0)
    assert events == [Ended("aborted by the peer: bye", True)]
    assert connection.data_to_send() == []  # nothing is said back


def test_request_over_max_message_size_is_too_large_not_buffered():
    connection = opened()
    big = encode(POST, b"tk", b"\xff" + b"x" * 5000)
    events = connection.receive_data(big[:100], 1.0)
    assert events == [TooLarge(POST, b"tk", len(big))]
    assert connection.receive_data(big[100:], 1.1) == []
    assert connection.ended is None


def test_non_request_over_max_message_size_aborts():
    connection = opened()
    big = encode(sig.CSM, b"", b"\xff" + b"x" * 5000)
    aborted_with(connection, connection.receive_data(big, 1.0), "over our Max-Message-Size")


def test_our_release_and_abort():
    connection = opened()
    assert connection.release("stopping") == [Ended("stopping", False)]
    assert signals(connection)[0].code == sig.RELEASE
    assert connection.abort("late") == []  # once ended, nothing more
    assert connection.send(CONTENT, b"", b"") == []


def test_lost_connection_ends_without_sending():
    connection = opened()
    connection.send(CONTENT, b"", b"")
    assert connection.lost("closed") == [Ended("closed", False)]
    assert connection.data_to_send() == []


def test_websocket_messages():
    connection = Connection(SETTINGS, 0.0, websocket=True)
    [ours] = connection.data_to_send()
    assert ours[0] >> 4 == 0  # Len 0: the WebSocket message carries the length
    assert connection.receive_message(encode_ws(sig.CSM, b"", b""), 0.0) == []
    assert connection.receive_message(encode_ws(POST, b"k", b"\xff1"), 0.0) == [
        Received(Frame(POST, b"k", b"\xff1"))]
    assert connection.receive_message(encode_ws(POST, b"b", b"\xff" + b"x" * 4000), 0.0) == [
        TooLarge(POST, b"b", 4004)]
    connection.data_to_send()
    events = connection.receive_message(b"\x21\x02ab", 0.0)
    assert events == [Ended("Len 2 in a WebSocket message (must be 0)", True)]
    [abort] = connection.data_to_send()
    assert abort[1] == sig.ABORT and abort[0] >> 4 == 0


def test_signalling_options_round_trip():
    items = [(2, b""), (4, b"\x01\x02"), (300, b"v" * 20), (1000, b"w" * 300)]
    assert sig.options(sig.encode_options(items, b"pay")) == (items, b"pay")
