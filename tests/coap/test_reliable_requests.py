"""Requests and answers on reliable connections without sockets: the UDP codec's rules on
frames, Block1, Block2 sized to the peer, notifications, 4.13."""

import pytest
import txthings.coap as txcoap

from bridge.coap import codec
from bridge.coap.codec import Malformed
from bridge.coap.framing import Frame, decode_ws, encode_ws
from bridge.coap.reliable_requests import Requests, body_of

POST, GET = 0x02, 0x01
PEER = object()


def request(code=POST, token=b"tk", path=(b"api", b"v1", b"tok", b"telemetry"), payload=b"",
            **options):
    message = txcoap.Message(code=code, payload=payload, token=token)
    message.opt.uri_path = path
    for name, value in options.items():
        setattr(message.opt, name, value)
    return Frame(code, token, body_of(message))


def answer_message(answer):
    code, token, body = answer
    return decode_ws(encode_ws(code, token, body))


def test_request_is_decoded_by_the_udp_codec():
    message = Requests(1000).decode(request(payload=b'{"t":1}'), PEER, 0.0)
    assert message.code == POST and message.token == b"tk" and message.remote is PEER
    assert list(message.opt.uri_path) == [b"api", b"v1", b"tok", b"telemetry"]
    assert message.payload == b'{"t":1}' and message.mtype == txcoap.CON


def test_unknown_critical_option_gets_4_02():
    # option 21 (delta 13 + 8), no value: critical and unknown
    code, token, body = Requests(1000).decode(Frame(POST, b"tk", b"\xd0\x08"), PEER, 0.0)
    assert code == 0x82 and token == b"tk" and b"unrecognized critical option 21" in body


def test_option_past_the_message_is_malformed():
    with pytest.raises(Malformed):
        Requests(1000).decode(Frame(POST, b"", b"\xb5api"), PEER, 0.0)


def test_block1_upload_is_reassembled_per_connection():
    requests = Requests(10000)
    first = request(payload=b"a" * 1024, block1=(0, True, 6))
    code, _, body = requests.decode(first, PEER, 0.0)
    assert code == codec.CONTINUE
    last = requests.decode(request(payload=b"b" * 10, block1=(1, False, 6)), PEER, 0.1)
    assert last.payload == b"a" * 1024 + b"b" * 10
    # another connection's block 1 is out of order
    code, _, _ = requests.decode(request(payload=b"c", block1=(1, False, 6)), object(), 0.2)
    assert code == codec.REQUEST_ENTITY_INCOMPLETE


def test_answer_goes_whole_when_it_fits_the_peer():
    requests = Requests(1000)
    req = requests.decode(request(GET), PEER, 0.0)
    response = codec.make_response(0x45, b"x" * 5000, 50)
    code, token, body = requests.answer(req, response, 8000)
    assert code == 0x45 and token == b"tk" and body.endswith(b"\xff" + b"x" * 5000)


def test_answer_is_sliced_to_the_peers_max_message_size():
    requests = Requests(1000)
    req = requests.decode(request(GET), PEER, 0.0)
    code, token, body = requests.answer(req, codec.make_response(0x45, b"x" * 5000, 50), 1152)
    message = txcoap.Message.decode(bytes((0x40 | 2, code, 0, 0)) + token + body)
    assert message.opt.block2.block_number == 0 and message.opt.block2.size_exponent == 6
    assert message.opt.block2.more and len(message.payload) == 1024


def test_block2_as_asked():
    requests = Requests(1000)
    req = requests.decode(request(GET, block2=(2, False, 1)), PEER, 0.0)
    code, token, body = requests.answer(req, codec.make_response(0x45, bytes(range(100)), 50),
                                        1152)
    message = txcoap.Message.decode(bytes((0x40 | 2, code, 0, 0)) + token + body)
    assert message.payload == bytes(range(64, 96)) and message.opt.block2.block_number == 2


def test_too_large_is_4_13_with_size1():
    code, token, body = Requests(1000).too_large(b"q", 2048)
    message = txcoap.Message.decode(bytes((0x40 | 1, code, 0, 0)) + token + body)
    assert code == 0x8D and token == b"q"
    assert 1900 < codec.uint_option(message, 60) < 2048


def test_notification_whole_or_first_block():
    requests = Requests(1000)
    code, token, body = requests.notification(b"o", 0x45, b"{}", 7, 50, 1152)
    message = txcoap.Message.decode(bytes((0x41, code, 0, 0)) + token + body)
    assert message.opt.observe == 7 and message.payload == b"{}"
    code, token, body = requests.notification(b"o", 0x45, b"z" * 3000, 8, 50, 1152)
    message = txcoap.Message.decode(bytes((0x41, code, 0, 0)) + token + body)
    assert message.opt.block2.block_number == 0 and len(message.payload) == 1024
    assert message.opt.etag == codec.etag(b"z" * 3000)
    code, token, body = requests.notification(b"o", 0x45, b"z" * 3000, 9, 50, 65536)
    assert body.endswith(b"\xff" + b"z" * 3000)
