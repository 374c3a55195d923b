"""The sans-IO CoAP endpoint driven with datagrams and explicit times: no reactor, no sockets."""

import random

import coapraw as raw
from bridge.coap.codec import make_response
from bridge.coap.endpoint import Endpoint, EndpointSettings
from bridge.core import codes

PEER = ("127.0.0.1", 40000)


class Log:
    def __init__(self):
        self.lines = []

    def debug(self, text, **fields):
        self.lines.append(("debug", text))

    info = warn = debug


def endpoint(**settings):
    return Endpoint(EndpointSettings(**settings), random.Random(7), Log(), 0.0)


def sent(ep):
    return [(raw.decode(data), peer) for data, peer in ep.datagrams_to_send()]


def test_a_request_answered_in_time_gets_a_piggybacked_ack():
    ep = endpoint()
    exchange = ep.receive_datagram(raw.encode(raw.request(raw.POST, "/a", b"{}", mid=5)), PEER,
                                   1.0)
    assert exchange is not None and exchange.message.payload == b"{}"
    ep.respond(exchange, make_response(codes.CREATED), 1.1)
    [(ack, peer)] = sent(ep)
    assert (ack.mtype, ack.code_str, ack.mid, peer) == (raw.ACK, "2.01", 5, PEER)


def test_a_slow_answer_goes_as_empty_ack_then_a_retransmitted_separate_response():
    ep = endpoint(empty_ack_delay=0.5, ack_timeout=2.0, max_retransmit=1)
    exchange = ep.receive_datagram(raw.encode(raw.request(raw.GET, "/a", mid=6)), PEER, 0.0)
    assert ep.next_timer() <= 0.5
    ep.handle_timer(0.5)
    [(empty, _)] = sent(ep)
    assert (empty.mtype, empty.code, empty.mid) == (raw.ACK, 0, 6)
    ep.respond(exchange, make_response(codes.CONTENT, b"x"), 1.0)
    [(separate, _)] = sent(ep)
    assert (separate.mtype, separate.code_str) == (raw.CON, "2.05")
    ep.handle_timer(ep.next_timer())  # within ACK_TIMEOUT x ACK_RANDOM_FACTOR
    while not ep.outgoing:
        ep.handle_timer(ep.next_timer())
    [(again, _)] = sent(ep)
    assert again == separate
    ep.receive_datagram(raw.encode(raw.Msg(raw.ACK, 0, separate.mid)), PEER, 5.0)
    for step in range(40):  # acknowledged: nothing more goes out
        ep.handle_timer(5.0 + step)
    assert sent(ep) == []


def test_a_duplicate_con_gets_the_cached_answer_and_is_not_a_new_request():
    ep = endpoint()
    data = raw.encode(raw.request(raw.POST, "/a", b"{}", mid=9))
    ep.respond(ep.receive_datagram(data, PEER, 0.0), make_response(codes.CREATED), 0.0)
    first = sent(ep)
    assert ep.receive_datagram(data, PEER, 10.0) is None
    assert sent(ep) == first
    other = ("127.0.0.1", 40001)  # the same MID from another peer is another message
    assert ep.receive_datagram(data, other, 10.0) is not None


def test_an_unacknowledged_notification_ends_as_a_timeout_outcome():
    ep = endpoint(ack_timeout=1.0, max_retransmit=2)
    ep.notify(42, PEER, b"\x01", True, codes.CONTENT, b'{"a":1}', 3, 0.0)
    copies = len(sent(ep))
    now = 0.0
    while not ep.outcomes and now < 100:
        now = ep.next_timer()
        ep.handle_timer(now)
        copies += len(sent(ep))
    assert ep.outcomes == [(42, "timeout")] and copies == 3  # first send and 2 retransmissions


def test_retransmissions_are_counted():
    ep = endpoint(ack_timeout=1.0, max_retransmit=2)
    ep.notify(42, PEER, b"\x01", True, codes.CONTENT, b'{"a":1}', 3, 0.0)
    while not ep.outcomes:
        ep.handle_timer(ep.next_timer())
    assert ep.retransmissions == 2


def test_a_withdrawn_notification_is_not_sent_again_and_has_no_outcome():
    ep = endpoint(ack_timeout=1.0, max_retransmit=4)
    ep.notify(42, PEER, b"\x01", True, codes.CONTENT, b'{"a":1}', 3, 0.0)
    assert len(sent(ep)) == 1
    assert ep.withdraw(42) is True and ep.withdraw(42) is False
    for now in range(1, 120):
        ep.handle_timer(float(now))
    assert (sent(ep), ep.outcomes, ep.retransmissions) == ([], [], 0)


def test_a_request_answered_with_nothing_gets_no_response_or_only_its_ack():
    ep = endpoint()
    non = ep.receive_datagram(raw.encode(raw.request(raw.POST, "/efento/m", b"x", raw.NON, 3)),
                              PEER, 0.0)
    ep.respond(non, None, 0.0)
    assert sent(ep) == []
    for now in (1.0, 10.0):
        ep.handle_timer(now)
    assert sent(ep) == []
    con = ep.receive_datagram(raw.encode(raw.request(raw.POST, "/efento/m", b"x", mid=4)),
                              PEER, 0.0)
    ep.respond(con, None, 0.0)
    [(ack, _)] = sent(ep)
    assert (ack.mtype, ack.code, ack.mid) == (raw.ACK, 0, 4)


def test_malformed_con_gets_rst_and_is_counted():
    ep = endpoint()
    assert ep.receive_datagram(bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789", PEER, 0.0) is None
    [(rst, _)] = sent(ep)
    assert (rst.mtype, rst.mid) == (raw.RST, 7) and ep.malformed == 1


def test_an_unverified_peer_gets_at_most_three_times_its_request_until_it_asks_for_more():
    ep = endpoint()
    data = raw.encode(raw.request(raw.GET, "/a", mid=1))
    ep.respond(ep.receive_datagram(data, PEER, 0.0), make_response(codes.CONTENT, b"y" * 3000),
               0.0)
    [(first, _)] = sent(ep)
    assert len(first.payload) <= 3 * len(data)
    assert first.uint(raw.BLOCK2) & 0x08  # more blocks follow


def test_a_notification_carries_the_content_format_it_is_given_in_every_block():
    ep = endpoint()
    ep.notify(1, PEER, b"\x01", False, codes.CONTENT, b"\x0a\x03abc", 3, 0.0,
              content_format=codes.OCTET_STREAM)
    ep.notify(2, PEER, b"\x01", False, codes.CONTENT, b"\x00" * 100, 4, 0.0, 32,
              content_format=codes.OCTET_STREAM)
    ep.notify(3, PEER, b"\x01", False, codes.CONTENT, b'{"a":1}', 5, 0.0)
    short, block0, json_one = [msg for msg, _ in sent(ep)]
    assert short.uint(raw.CONTENT_FORMAT) == block0.uint(raw.CONTENT_FORMAT) == 42
    assert block0.option(raw.BLOCK2) is not None and len(block0.payload) == 32
    assert json_one.uint(raw.CONTENT_FORMAT) == 50
