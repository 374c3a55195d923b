"""The exchange layer (bridge/coap/exchange.py) alone: whole request messages in, values
out, as any transport (UDP and DTLS through the message layer, RFC 8323 directly) uses
it. No message types, no Message IDs, no sockets."""

import coapraw as raw
from bridge.coap.blocks import BLOCK1_LIFETIME, LargeBody
from bridge.coap.exchange import Answer, ExchangeLayer, Incoming
from bridge.coap.message import GET, POST, Message, make_response
from bridge.coap.options import BLOCK1, BLOCK2, ETAG, OBSERVE, SIZE1, SIZE2, URI_PATH, Block
from bridge.core import codes
from coaplayer import Log

PEER = ("127.0.0.1", 40000)
TOKEN = b"\x05\x06"


def layer(max_body=65536, observation=None):
    return ExchangeLayer(max_body, Log(), observation)


def request(code=POST, path=("api", "v1", "t", "telemetry"), payload=b"", *extra):
    options = tuple(sorted([(URI_PATH, p.encode()) for p in path] + list(extra),
                           key=lambda option: option[0]))
    return Message(code, TOKEN, options, payload)


def block1(number, more, szx=0):
    return (BLOCK1, Block(number, more, szx).encode())


def test_a_plain_request_comes_out_whole_with_the_transports_context():
    exchanges = layer()
    context = object()
    incoming = exchanges.receive(PEER, request(payload=b"{}"), 0.0, context)
    assert incoming == Incoming(PEER, request(payload=b"{}"), None, context)


def test_a_refused_option_is_answered_at_once_with_the_requests_token():
    answer = layer().receive(PEER, request(POST, ("a",), b"", (2049, b"x")), 0.0)
    assert isinstance(answer, Message)
    assert (codes.dotted(answer.code), answer.token) == ("4.02", TOKEN)
    assert b"2049" in answer.payload and answer.content_format == codes.TEXT_PLAIN


def test_block1_blocks_get_2_31_until_the_last_brings_the_whole_body():
    exchanges = layer()
    body = bytes(range(256)) * 2 + b"end"
    blocks = [body[n:n + 64] for n in range(0, len(body), 64)]
    for number, part in enumerate(blocks[:-1]):
        answer = exchanges.receive(PEER, request(POST, ("up",), part, block1(number, True, 2)),
                                   float(number))
        assert codes.dotted(answer.code) == "2.31"
        assert answer.block1 == Block(number, True, 2) and answer.token == TOKEN
    last = len(blocks) - 1
    incoming = exchanges.receive(PEER, request(POST, ("up",), blocks[-1],
                                               block1(last, False, 2)), 9.0)
    assert isinstance(incoming, Incoming) and incoming.message.payload == body
    answer = exchanges.response(incoming, Answer(make_response(codes.CHANGED)), None)
    assert answer.block1 == Block(last, False, 2)  # the last block, echoed


def test_block1_out_of_order_too_large_or_not_full_is_refused():
    exchanges = layer(max_body=100)
    assert codes.dotted(exchanges.receive(PEER, request(POST, ("up",), b"x" * 16,
                                                        block1(1, True)), 0.0).code) == "4.08"
    exchanges.receive(PEER, request(POST, ("up",), b"x" * 64, block1(0, True, 2)), 0.0)
    too_large = exchanges.receive(PEER, request(POST, ("up",), b"x" * 64, block1(1, True, 2)),
                                  0.0)
    assert codes.dotted(too_large.code) == "4.13" and too_large.uint(SIZE1) == 100
    announced = exchanges.receive(PEER, request(POST, ("up",), b"x" * 16, block1(0, True),
                                                (SIZE1, b"\x01\x00")), 0.0)
    assert codes.dotted(announced.code) == "4.13"
    short = exchanges.receive(PEER, request(POST, ("up",), b"x" * 10, block1(0, True)), 0.0)
    assert codes.dotted(short.code) == "4.00"


def test_an_upload_left_unfinished_is_forgotten_after_its_lifetime():
    exchanges = layer()
    exchanges.receive(PEER, request(POST, ("up",), b"x" * 16, block1(0, True)), 10.0)
    assert exchanges.next_timer() == 10.0 + BLOCK1_LIFETIME
    exchanges.handle_timer(10.0 + BLOCK1_LIFETIME)
    assert exchanges.next_timer() is None
    late = exchanges.receive(PEER, request(POST, ("up",), b"y", block1(1, False)), 80.0)
    assert codes.dotted(late.code) == "4.08"


def test_uploads_of_two_peers_do_not_mix():
    exchanges = layer()
    other = ("127.0.0.1", 40001)
    exchanges.receive(PEER, request(POST, ("up",), b"a" * 16, block1(0, True)), 0.0)
    exchanges.receive(other, request(POST, ("up",), b"b" * 16, block1(0, True)), 0.0)
    mine = exchanges.receive(PEER, request(POST, ("up",), b"A", block1(1, False)), 0.0)
    theirs = exchanges.receive(other, request(POST, ("up",), b"B", block1(1, False)), 0.0)
    assert (mine.message.payload, theirs.message.payload) == (b"a" * 16 + b"A", b"b" * 16 + b"B")


def test_block2_answers_the_block_asked_for_with_etag_and_size2_and_4_02_past_the_end():
    exchanges = layer()
    body = bytes(range(256)) * 8  # 2048 bytes
    asked = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bytes([0x22]))), 0.0)
    third = exchanges.response(asked, Answer(make_response(codes.CONTENT, body)), None)
    assert third.block2 == Block(2, True, 2) and third.payload == body[128:192]
    assert third.option(ETAG) is not None and third.option(SIZE2) is None
    first = exchanges.response(exchanges.receive(PEER, request(GET, ("b",)), 0.0),
                               Answer(make_response(codes.CONTENT, body)), None)
    assert first.block2 == Block(0, True, 6) and first.uint(SIZE2) == 2048
    assert first.option(ETAG) == third.option(ETAG) and first.token == TOKEN
    past = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bytes([0xF6]))), 0.0)
    assert codes.dotted(exchanges.response(past, Answer(make_response(codes.CONTENT, body)),
                                           None).code) == "4.02"


def test_room_makes_the_blocks_of_an_answer_smaller_and_only_when_it_has_a_body():
    exchanges = layer()
    incoming = exchanges.receive(PEER, request(GET, ("b",)), 0.0)
    cut = exchanges.response(incoming, Answer(make_response(codes.CONTENT, b"z" * 3000)), 100)
    assert cut.block2 == Block(0, True, 2) and len(cut.payload) == 64
    empty = exchanges.response(incoming, Answer(make_response(codes.CHANGED)), 10)
    assert empty.block2 is None


def test_a_large_body_is_read_block_by_block_with_its_own_tag():
    exchanges = layer()
    reads = []

    def read(start, length):
        reads.append((start, length))
        return b"p" * min(length, 5000 - start)
    large = LargeBody(5000, read, b"pkgtag")
    asked = exchanges.receive(PEER, request(GET, ("fw", "t"), b"", (BLOCK2, bytes([0x46]))),
                              0.0)
    block = exchanges.response(asked, Answer(make_response(codes.CONTENT), large=large), None)
    assert reads == [(4096, 1024)] and block.block2 == Block(4, False, 6)
    assert block.option(ETAG) == b"pkgtag" and len(block.payload) == 904


def test_a_notification_longer_than_its_block_size_goes_as_its_first_block():
    body = b"n" * 100
    short = ExchangeLayer.notification(TOKEN, codes.CONTENT, b"{}", 7)
    assert (short.observe, short.content_format, short.block2) == (7, codes.APPLICATION_JSON,
                                                                   None)
    first = ExchangeLayer.notification(TOKEN, codes.CONTENT, body, 8, 32, codes.OCTET_STREAM)
    assert first.block2 == Block(0, True, 1) and first.payload == body[:32]
    assert first.uint(SIZE2) == 100 and first.option(ETAG) is not None
    assert first.content_format == codes.OCTET_STREAM and first.token == TOKEN
    assert [number for number, _ in first.options] == sorted(n for n, _ in first.options)


def test_a_registration_gets_the_transports_observation_and_a_reliable_transport_none():
    made = []

    def observation(message, now):
        made.append((message.code, now))
        return "state"
    exchanges = layer(observation=observation)
    registration = request(GET, ("api", "v1", "t", "attributes"), b"", (OBSERVE, b""))
    assert exchanges.receive(PEER, registration, 3.0).observation == "state"
    assert made == [(GET, 3.0)]
    deregistration = request(GET, ("a",), b"", (OBSERVE, b"\x01"))
    assert exchanges.receive(PEER, deregistration, 4.0).observation is None
    assert exchanges.receive(PEER, request(POST, ("a",), b"", (OBSERVE, b"")), 4.0) \
        .observation is None
    assert made == [(GET, 3.0)]
    assert layer().receive(PEER, registration, 5.0).observation is None


def test_the_answers_are_what_an_independent_decoder_reads():
    from bridge.coap.message import encode
    exchanges = layer()
    incoming = exchanges.receive(PEER, request(GET, ("b",)), 0.0)
    answer = exchanges.response(incoming, Answer(make_response(
        codes.CONTENT, b"x" * 2000, codes.TEXT_PLAIN, max_age=30)), None)
    decoded = raw.decode(encode(raw.ACK, 9, answer))
    assert decoded.uint(raw.CONTENT_FORMAT) == codes.TEXT_PLAIN and decoded.uint(14) == 30
    assert decoded.uint(raw.BLOCK2) == (0 << 4) | 8 | 6 and decoded.token == TOKEN


# -- BERT (RFC 8323 §6): SZX 7 where a reliable connection's two CSMs offer it ------------

def bert(number, more):
    return Block(number, more, 7).encode()


def bert_layer(on=True, max_body=65536):
    return ExchangeLayer(max_body, Log(), None, bert=lambda peer: on)


def test_szx_7_is_refused_with_4_02_where_the_transport_gives_no_bert_predicate():
    for option in ((BLOCK1, bert(0, True)), (BLOCK2, bert(0, False))):
        answer = layer().receive(PEER, request(GET, ("b",), b"x" * 1024, option), 0.0)
        assert codes.dotted(answer.code) == "4.02"
        assert answer.payload == b"block size exponent 7 is reserved"


def test_szx_7_is_refused_with_the_reason_where_bert_is_off_with_the_peer():
    answer = bert_layer(on=False).receive(PEER, request(GET, ("b",), b"",
                                                        (BLOCK2, bert(0, False))), 0.0)
    assert codes.dotted(answer.code) == "4.02" and b"Block-Wise-Transfer" in answer.payload


def test_with_bert_on_the_other_options_are_still_refused():
    exchanges = bert_layer()
    taken = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bert(3, False))), 0.0)
    assert isinstance(taken, Incoming) and taken.message.block2 == Block(3, False, 7)
    refused = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bert(0, False)),
                                              (2049, b"x")), 0.0)
    assert codes.dotted(refused.code) == "4.02" and b"2049" in refused.payload
    too_long = exchanges.receive(PEER, request(GET, ("b",), b"",
                                               (BLOCK2, b"\x00\x00\x00\x07")), 0.0)
    assert codes.dotted(too_long.code) == "4.02" and b"length" in too_long.payload


def test_a_bert_upload_moves_on_by_the_1024_byte_blocks_each_message_carried():
    exchanges = bert_layer()
    body = bytes(range(256)) * 28 + b"tail"  # 7172 bytes: 3072 + 2048 + 2052
    first = exchanges.receive(PEER, request(POST, ("up",), body[:3072], (BLOCK1, bert(0, True))),
                              0.0)
    assert codes.dotted(first.code) == "2.31" and first.block1 == Block(0, True, 7)
    second = exchanges.receive(PEER, request(POST, ("up",), body[3072:5120],
                                             (BLOCK1, bert(3, True))), 0.1)
    assert codes.dotted(second.code) == "2.31" and second.block1 == Block(3, True, 7)
    last = exchanges.receive(PEER, request(POST, ("up",), body[5120:], (BLOCK1, bert(5, False))),
                             0.2)
    assert isinstance(last, Incoming) and last.message.payload == body
    answer = exchanges.bert_response(last, Answer(make_response(codes.CHANGED)), 4096)
    assert answer.block1 == Block(5, False, 7) and answer.token == TOKEN


def test_a_bert_upload_out_of_order_not_whole_kilobytes_or_too_large_is_refused():
    exchanges = bert_layer(max_body=4096)
    exchanges.receive(PEER, request(POST, ("up",), b"a" * 2048, (BLOCK1, bert(0, True))), 0.0)
    wrong = exchanges.receive(PEER, request(POST, ("up",), b"b" * 1024, (BLOCK1, bert(1, True))),
                              0.1)  # block 2 is next: the first message carried two
    assert codes.dotted(wrong.code) == "4.08"
    partial = exchanges.receive(PEER, request(POST, ("up",), b"c" * 1500,
                                              (BLOCK1, bert(0, True))), 0.2)
    assert codes.dotted(partial.code) == "4.00"
    exchanges.receive(PEER, request(POST, ("up",), b"d" * 3072, (BLOCK1, bert(0, True))), 0.3)
    over = exchanges.receive(PEER, request(POST, ("up",), b"e" * 2048, (BLOCK1, bert(3, False))),
                             0.4)
    assert codes.dotted(over.code) == "4.13" and over.uint(SIZE1) == 4096


def test_a_bert_answer_goes_in_blocks_of_the_length_given_from_the_block_asked():
    exchanges = bert_layer()
    body = bytes(range(250)) * 20  # 5000 bytes
    answer = Answer(make_response(codes.CONTENT, body))
    first = exchanges.bert_response(exchanges.receive(PEER, request(GET, ("b",)), 0.0), answer,
                                    2048)
    assert first.block2 == Block(0, True, 7) and first.payload == body[:2048]
    assert first.uint(SIZE2) == 5000 and first.option(ETAG) is not None
    asked = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bert(2, False))), 0.1)
    middle = exchanges.bert_response(asked, answer, 2048)
    assert middle.block2 == Block(2, True, 7) and middle.payload == body[2048:4096]
    assert middle.option(ETAG) == first.option(ETAG) and middle.option(SIZE2) is None
    asked = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bert(4, False))), 0.2)
    last = exchanges.bert_response(asked, answer, 2048)
    assert last.block2 == Block(4, False, 7) and last.payload == body[4096:]
    past = exchanges.receive(PEER, request(GET, ("b",), b"", (BLOCK2, bert(5, False))), 0.3)
    assert codes.dotted(exchanges.bert_response(past, answer, 2048).code) == "4.02"
    whole = exchanges.bert_response(asked._replace(message=request(GET, ("b",))),
                                    Answer(make_response(codes.CONTENT, body[:2000])), 2048)
    assert whole.block2 is None and whole.payload == body[:2000]


def test_a_large_body_is_read_in_bert_blocks():
    exchanges = bert_layer()
    reads = []

    def read(start, length):
        reads.append((start, length))
        return b"p" * max(0, min(length, 10000 - start))
    large = Answer(make_response(codes.CONTENT), large=LargeBody(10000, read, b"pkgtag"))
    asked = exchanges.receive(PEER, request(GET, ("fw", "t"), b"", (BLOCK2, bert(8, False))), 0.0)
    block = exchanges.bert_response(asked, large, 4096)
    assert reads == [(8192, 4096)] and block.block2 == Block(8, False, 7)
    assert len(block.payload) == 1808 and block.option(ETAG) == b"pkgtag"


def test_a_notification_longer_than_a_bert_block_size_goes_as_a_bert_block():
    first = ExchangeLayer.notification(TOKEN, codes.CONTENT, b"n" * 5000, 3, 2048)
    assert first.block2 == Block(0, True, 7) and first.payload == b"n" * 2048
    assert first.uint(SIZE2) == 5000
