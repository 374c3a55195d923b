"""Requests and answers on reliable connections without sockets: frames through the shared
exchange layer, Block1, Block2 sized to the peer, notifications, 4.13."""

import pytest

from bridge.coap.exchange import Answer, Incoming
from bridge.coap.framing import Frame
from bridge.coap.message import Message, make_response
from bridge.coap.options import (BLOCK1, BLOCK2, ETAG, OBSERVE, SIZE1, URI_PATH, Block,
                                 Malformed)
from bridge.coap.reliable_requests import (Requests, answer_room, bert_length, body_of,
                                           message_of)
from bridge.core import codes

POST, GET = 0x02, 0x01
PEER = ("peer", 1)
PATH = tuple((URI_PATH, s) for s in (b"api", b"v1", b"tok", b"telemetry"))


class QuietLog:
    def debug(self, *args, **kwargs):
        pass


def requests(max_body=1000, bert=None):
    return Requests(max_body, QuietLog(), bert)


def frame(code=POST, token=b"tk", payload=b"", extra=()):
    options = tuple(sorted(PATH + tuple(extra), key=lambda o: o[0]))
    return Frame(code, token, body_of(Message(code, token, options, payload)))


def sent(out):
    code, token, body = out
    return message_of(Frame(code, token, body))


def test_request_reaches_the_handler_as_an_incoming():
    got = requests().decode(frame(payload=b'{"t":1}'), PEER, 0.0)
    assert isinstance(got, Incoming) and got.peer == PEER and got.observation is None
    message = got.message
    assert message.code == POST and message.token == b"tk" and message.mtype is None
    assert message.uri_path == (b"api", b"v1", b"tok", b"telemetry")
    assert message.payload == b'{"t":1}'


def test_unknown_critical_option_gets_4_02():
    out = requests().decode(Frame(POST, b"tk", b"\xd0\x08"), PEER, 0.0)  # option 21
    answer = sent(out)
    assert answer.code == codes.BAD_OPTION and answer.token == b"tk"
    assert b"unrecognized critical option 21" in answer.payload


def test_option_past_the_message_is_malformed():
    with pytest.raises(Malformed):
        requests().decode(Frame(POST, b"", b"\xb5api"), PEER, 0.0)


def test_block1_upload_is_reassembled_per_connection():
    layer = requests(10000)
    first = frame(payload=b"a" * 1024, extra=[(BLOCK1, Block(0, True, 6).encode())])
    assert sent(layer.decode(first, PEER, 0.0)).code == 0x5F  # 2.31 Continue
    last = layer.decode(frame(payload=b"b" * 10, extra=[(BLOCK1, Block(1, False, 6).encode())]),
                        PEER, 0.1)
    assert last.message.payload == b"a" * 1024 + b"b" * 10
    # another connection's block 1 is out of order
    other = layer.decode(frame(payload=b"c", extra=[(BLOCK1, Block(1, False, 6).encode())]),
                         ("other", 2), 0.2)
    assert sent(other).code == 0x88  # 4.08


def test_answer_goes_whole_when_it_fits_the_peer():
    layer = requests()
    incoming = layer.decode(frame(GET), PEER, 0.0)
    code, token, body = layer.answer(incoming, Answer(make_response(0x45, b"x" * 5000, 50)), 8000)
    assert code == 0x45 and token == b"tk" and body.endswith(b"\xff" + b"x" * 5000)


def test_answer_is_sliced_to_the_peers_max_message_size():
    layer = requests()
    incoming = layer.decode(frame(GET), PEER, 0.0)
    answer = sent(layer.answer(incoming, Answer(make_response(0x45, b"x" * 5000, 50)), 1152))
    assert answer.block2 == Block(0, True, 6) and len(answer.payload) == 1024
    assert answer.token == b"tk"


def test_block2_as_asked():
    layer = requests()
    incoming = layer.decode(frame(GET, extra=[(BLOCK2, Block(2, False, 1).encode())]), PEER, 0.0)
    answer = sent(layer.answer(incoming, Answer(make_response(0x45, bytes(range(100)), 50)),
                               1152))
    assert answer.payload == bytes(range(64, 96)) and answer.block2.number == 2


def test_too_large_is_4_13_with_size1():
    answer = sent(requests().too_large(b"q", 2048))
    assert answer.code == codes.REQUEST_ENTITY_TOO_LARGE and answer.token == b"q"
    assert 1900 < answer.uint(SIZE1) < 2048


def test_notification_whole_or_first_block():
    layer = requests()
    whole = sent(layer.notification(b"o", 0x45, b"{}", 7, 50, 1152))
    assert whole.uint(OBSERVE) == 7 and whole.payload == b"{}"
    first = sent(layer.notification(b"o", 0x45, b"z" * 3000, 8, 50, 1152))
    assert first.block2 == Block(0, True, 6) and len(first.payload) == 1024
    assert first.option(ETAG) is not None
    big = sent(layer.notification(b"o", 0x45, b"z" * 3000, 9, 50, 65536))
    assert big.payload == b"z" * 3000 and big.block2 is None


# -- BERT (RFC 8323 §6) ----------------------------------------------------------------

def test_bert_blocks_are_the_whole_kilobytes_that_fit_beside_header_token_and_options():
    assert bert_length(66560) == 65536  # the shipped reliable.max_message_size: 64 KiB
    assert bert_length(1153) == 1024 and bert_length(8192) == 7168
    assert answer_room(8192) == 8192 - 72


def test_an_answer_that_does_not_fit_goes_in_bert_blocks_where_bert_is_on():
    layer = requests(bert=lambda peer: True)
    body = bytes(range(200)) * 100  # 20,000 bytes
    incoming = layer.decode(frame(GET), PEER, 0.0)
    first = sent(layer.answer(incoming, Answer(make_response(0x45, body, 50)), 8192, 7168))
    assert first.block2 == Block(0, True, 7) and first.payload == body[:7168]
    asked = layer.decode(frame(GET, extra=[(BLOCK2, Block(14, False, 7).encode())]), PEER, 0.1)
    last = sent(layer.answer(asked, Answer(make_response(0x45, body, 50)), 8192, 7168))
    assert last.block2 == Block(14, False, 7) and last.payload == body[14336:]
    # a smaller block asked is answered in that size; whole when it fits
    small = layer.decode(frame(GET, extra=[(BLOCK2, Block(1, False, 6).encode())]), PEER, 0.2)
    second = sent(layer.answer(small, Answer(make_response(0x45, body, 50)), 8192, 7168))
    assert second.block2 == Block(1, True, 6) and second.payload == body[1024:2048]
    whole = sent(layer.answer(incoming, Answer(make_response(0x45, body[:5000], 50)), 8192,
                              7168))
    assert whole.block2 is None and whole.payload == body[:5000]


def test_a_bert_block2_where_bert_is_off_gets_4_02():
    layer = requests(bert=lambda peer: False)
    out = layer.decode(frame(GET, extra=[(BLOCK2, Block(0, False, 7).encode())]), PEER, 0.0)
    assert sent(out).code == codes.BAD_OPTION


def test_a_bert_upload_is_reassembled_and_its_last_block_echoed():
    layer = requests(10000, bert=lambda peer: True)
    first = frame(payload=b"a" * 4096, extra=[(BLOCK1, Block(0, True, 7).encode())])
    cont = sent(layer.decode(first, PEER, 0.0))
    assert cont.code == 0x5F and cont.block1 == Block(0, True, 7)
    last = layer.decode(frame(payload=b"b" * 1500, extra=[(BLOCK1, Block(4, False, 7).encode())]),
                        PEER, 0.1)
    assert last.message.payload == b"a" * 4096 + b"b" * 1500
    done = sent(layer.answer(last, Answer(make_response(0x44)), 8192, 7168))
    assert done.code == 0x44 and done.block1 == Block(4, False, 7)


def test_a_notification_longer_than_the_message_is_a_bert_block_where_bert_is_on():
    first = sent(requests().notification(b"o", 0x45, b"z" * 20000, 4, 50, 8192, 7168))
    assert first.block2 == Block(0, True, 7) and len(first.payload) == 7168
