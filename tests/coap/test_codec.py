"""The codec (bridge/coap/message.py, options.py) against the tests' own independent one
(tests/coapraw.py): every field and option round-trips, malformed datagrams raise
``Malformed`` and nothing else (W2), refused options get their codes (W3), and a Block
option of value 0 is encoded as the empty uint (W11)."""

import random

import pytest

import coapraw as raw
from bridge.coap import message as codec
from bridge.coap.options import (BLOCK1, BLOCK2, Block, Malformed, NotCoap, decode_options,
                                 encode_options, refusal)
from bridge.core import codes


def random_message(rng):
    options = sorted(((rng.choice([1, 3, 4, 6, 11, 12, 14, 15, 23, 60, 258, 2048, 65000]),
                       bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 12, 13, 14,
                                                                           268, 269, 300]))))
                      for _ in range(rng.randrange(6))), key=lambda option: option[0])
    token = bytes(rng.randrange(256) for _ in range(rng.randrange(9)))
    payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 50, 1100])))
    return raw.Msg(rng.randrange(4), rng.choice([1, 2, 3, 4, 65, 69, 132, 160]),
                   rng.randrange(65536), token, options, payload)


def test_decode_reads_what_an_independent_encoder_wrote():
    rng = random.Random(5)
    for _ in range(500):
        sent = random_message(rng)
        got = codec.decode(raw.encode(sent))
        assert (got.mtype, got.code, got.mid, got.token, got.options, got.payload) == (
            sent.mtype, sent.code, sent.mid, sent.token, tuple(sent.options), sent.payload)


def test_encode_writes_what_an_independent_decoder_reads():
    rng = random.Random(6)
    for _ in range(500):
        sent = random_message(rng)
        data = codec.encode(sent.mtype, sent.mid, codec.Message(
            sent.code, sent.token, tuple(sent.options), sent.payload))
        assert data == raw.encode(sent)
        assert raw.decode(data) == sent


def test_an_empty_message_is_its_header_alone():
    message = codec.decode(bytes([0x60, 0, 0x12, 0x34]))
    assert (message.mtype, message.code, message.mid) == (codec.ACK, 0, 0x1234)
    assert codec.empty(codec.RST, 7) == bytes([0x70, 0, 0, 7])


@pytest.mark.parametrize("datagram", [b"", b"\x40", b"\x40\x01\x00", b"\x80\x01\x00\x01",
                                      b"\x00\x01\x00\x01"],
                         ids=["empty", "1-byte", "3-byte", "version-2", "version-0"])
def test_short_or_wrong_version_datagrams_are_not_coap(datagram):
    with pytest.raises(NotCoap):
        codec.decode(datagram)


@pytest.mark.parametrize("datagram", [
    bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789",       # TKL 9
    bytes([0x4F, 0x01, 0x00, 0x07]) + b"x" * 15,          # TKL 15
    bytes([0x48, 0x01, 0x00, 0x07]) + b"1234",            # token truncated
    bytes([0x40, 0x01, 0x00, 0x07, 0xF1, 0x00]),          # option delta nibble 15
    bytes([0x40, 0x01, 0x00, 0x07, 0x1F]),                # option length nibble 15
    bytes([0x40, 0x01, 0x00, 0x07, 0xD1]),                # delta 13 without its extension byte
    bytes([0x40, 0x01, 0x00, 0x07, 0xE1, 0x00]),          # delta 14 with one extension byte
    bytes([0x40, 0x01, 0x00, 0x07, 0xB5, 0x61]),          # Uri-Path claims 5 bytes, has 1
    bytes([0x40, 0x01, 0x00, 0x07, 0xFF]),                # payload marker, no payload
    bytes([0x40, 0x20, 0x00, 0x07]),                      # reserved class 1
    bytes([0x40, 0xC0, 0x00, 0x07]),                      # reserved class 6
    bytes([0x40, 0xE0, 0x00, 0x07]),                      # class 7 (RFC 8323 signalling)
    bytes([0x41, 0x00, 0x00, 0x07, 0x99]),                # empty message with a token
    bytes([0x40, 0x00, 0x00, 0x07, 0xFF, 0x01]),          # empty message with a payload
], ids=["tkl9", "tkl15", "token-truncated", "nibble15", "length15", "ext-missing", "ext-short",
        "option-truncated", "marker-only", "class1", "class6", "class7", "empty-with-token",
        "empty-with-payload"])
def test_w2_malformed_datagrams_raise_malformed_and_nothing_else(datagram):
    with pytest.raises(Malformed) as raised:
        codec.decode(datagram)
    assert not isinstance(raised.value, NotCoap)


def test_w2_no_truncation_of_a_valid_message_raises_anything_but_malformed():
    data = raw.encode(raw.request(raw.POST, "/api/v1/%s/telemetry" % ("t" * 20), b'{"a":1}',
                                  extra=[(2048, b"x" * 300)]))
    for cut in range(len(data)):
        try:
            codec.decode(data[:cut])
        except Malformed:
            pass


def test_options_of_every_extended_length_and_delta_round_trip():
    options = ((1, b""), (14, b"a" * 12), (28, b"b" * 13), (300, b"c" * 268), (301, b"d" * 269),
               (301, b"e" * 1000), (65000, b"f"))
    data = encode_options(options)
    assert decode_options(data, 0, len(data)) == (options, b"")
    assert decode_options(data + b"\xffpay", 0, len(data) + 4) == (options, b"pay")


def test_accessors_read_the_options_a_request_carries():
    request = codec.decode(raw.encode(raw.request(
        raw.GET, "/api/v1/tok/attributes", extra=[(15, b"a=1"), (15, b"b=2"), (6, b""),
                                                  (BLOCK2, bytes([0x35]))])))
    assert request.uri_path == (b"api", b"v1", b"tok", b"attributes")
    assert request.uri_query == (b"a=1", b"b=2")
    assert request.observe == 0 and request.block1 is None
    assert request.block2 == Block(3, False, 5) and request.block2.size == 512
    assert request.is_request and not codec.Message(69).is_request


def test_w11_a_block_option_of_value_0_is_the_empty_uint_and_reads_back_as_block_0():
    assert Block(0, False, 0).encode() == b""
    assert Block.decode(b"") == Block(0, False, 0)
    for block in (Block(0, True, 6), Block(1, False, 0), Block(4095, True, 2),
                  Block(1 << 19, False, 6)):
        assert Block.decode(block.encode()) == block


def test_make_response_puts_its_options_in_order():
    message = codec.make_response(codes.CONTENT, b"x", codes.TEXT_PLAIN, max_age=60, size1=9,
                                  observe=3, block1=Block(2, False, 6), etag=b"tag")
    assert [number for number, _ in message.options] == [4, 6, 12, 14, 27, 60]
    assert raw.decode(codec.encode(codec.ACK, 1, message)).uint(27) == (2 << 4) | 6


@pytest.mark.parametrize("options,expected", [
    (((2049, b"x"),), codes.BAD_OPTION),
    (((35, b"coap://a/"),), codes.PROXYING_NOT_SUPPORTED),
    (((39, b"coap"),), codes.PROXYING_NOT_SUPPORTED),
    (((3, b""),), codes.BAD_OPTION),  # Uri-Host of length 0
    (((7, b"123"),), codes.BAD_OPTION),  # Uri-Port of 3 bytes
    (((11, b"x" * 256),), codes.BAD_OPTION),
    (((BLOCK1, b"\x07"),), codes.BAD_OPTION),  # SZX 7 is reserved
    (((BLOCK2, b"\x01\x02\x03\x04"),), codes.BAD_OPTION),
    (((11, b"api"), (2048, b"x"), (60, b"\x01")), None),  # elective ones are ignored
], ids=["unknown-critical", "proxy-uri", "proxy-scheme", "uri-host-empty", "uri-port-long",
        "uri-path-long", "szx7", "block-long", "electives"])
def test_w3_refused_options_get_their_code(options, expected):
    refused = refusal(options)
    assert (refused[0] if refused else None) == expected
