"""RFC 8323 §3.2 and §4 framing without sockets: lengths, tokens, limits, split streams."""

import pytest

from bridge.coap.framing import (Frame, FramingError, Oversized, StreamDecoder, decode_ws,
                                 encode, encode_ws, header_size)

POST = 0x02


@pytest.mark.parametrize("length, head", [
    (0, b"\x01"), (12, b"\xc1"),  # Len in the nibble
    (13, b"\xd1\x00"), (268, b"\xd1\xff"),  # 13: one byte, minus 13
    (269, b"\xe1\x00\x00"), (65804, b"\xe1\xff\xff"),  # 14: two bytes, minus 269
    (65805, b"\xf1\x00\x00\x00\x00"), (70000, b"\xf1\x00\x00\x10\x63"),  # 15: four, minus 65805
])
def test_length_field_at_every_boundary(length, head):
    body = b"x" * length
    data = encode(POST, b"t", body)
    assert data[:len(head)] == head
    assert data[len(head)] == POST and data[len(head) + 1:len(head) + 2] == b"t"
    assert len(data) == header_size(length, 1) + length
    assert StreamDecoder(1 << 20).feed(data) == [Frame(POST, b"t", body)]


def test_websocket_message_has_len_zero_and_no_extended_length():
    data = encode_ws(POST, b"\x01\x02", b"\xb4test")
    assert data == b"\x02\x02\x01\x02\xb4test"
    assert decode_ws(data) == Frame(POST, b"\x01\x02", b"\xb4test")


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter than a CoAP header"),
    (b"\x00", "shorter than a CoAP header"),
    (b"\x10\x02x", "Len 1 in a WebSocket message"),
    (b"\x09\x02" + b"t" * 9, "token length 9"),
    (b"\x0f\x02" + b"t" * 15, "token length 15"),
    (b"\x04\x02tt", "token truncated"),
])
def test_malformed_websocket_messages(data, reason):
    with pytest.raises(FramingError, match=reason):
        decode_ws(data)


@pytest.mark.parametrize("tkl", range(9, 16))
def test_reserved_token_lengths_are_framing_errors(tkl):
    with pytest.raises(FramingError, match="token length %d" % tkl):
        StreamDecoder(1024).feed(bytes((tkl,)) + b"\x02" + b"t" * tkl)


def test_nothing_after_a_malformed_header_is_read():
    good = encode(POST, b"", b"\xff1")
    with pytest.raises(FramingError):
        StreamDecoder(1024).feed(good + b"\x0a\x02" + b"t" * 10 + good)


def pipelined():
    return [Frame(POST, b"", b""), Frame(0x01, b"\x07", b"\xb3api"),
            Frame(0xE1, b"", b"\x22\x04\x00"), Frame(POST, b"tok", b"\xff" + b"p" * 300),
            Frame(0x45, b"12345678", b"\xff" + b"q" * 70000), Frame(0xE2, b"", b"")]


def test_pipelined_messages_split_at_every_byte_boundary():
    frames = pipelined()[:4]
    stream = b"".join(encode(*f) for f in frames)
    for cut in range(len(stream) + 1):
        decoder = StreamDecoder(1 << 20)
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == frames, cut
        assert decoder.buffered == 0


def test_pipelined_messages_fed_one_byte_at_a_time():
    frames = pipelined()
    stream = b"".join(encode(*f) for f in frames)
    decoder = StreamDecoder(1 << 20)
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i:i + 1])
    assert got == frames


def test_partial_message_is_held_until_complete():
    data = encode(POST, b"ab", b"\xff" + b"z" * 40)
    decoder = StreamDecoder(1024)
    assert decoder.feed(data[:10]) == []
    assert decoder.buffered == 10
    assert decoder.feed(data[10:]) == [Frame(POST, b"ab", b"\xff" + b"z" * 40)]


def test_message_over_the_limit_is_reported_and_skipped_not_buffered():
    big = encode(POST, b"tk", b"\xff" + b"B" * 5000)
    after = encode(POST, b"t2", b"\xff1")
    decoder = StreamDecoder(1000)
    # its header alone: reported at once with its code, token and size
    head = header_size(5001, 2)
    assert decoder.feed(big[:head]) == [Oversized(POST, b"tk", len(big))]
    for i in range(head, len(big), 700):
        assert decoder.feed(big[i:i + 700]) == []
        assert decoder.buffered == 0  # skipped as it arrives
    assert decoder.feed(after) == [Frame(POST, b"t2", b"\xff1")]


def test_message_over_the_limit_in_one_read_with_the_next():
    big = encode(POST, b"", b"\xff" + b"B" * 3000)
    after = encode(POST, b"x", b"")
    assert StreamDecoder(1000).feed(big + after) == [Oversized(POST, b"", len(big)),
                                                     Frame(POST, b"x", b"")]


def test_limit_counts_the_whole_message():
    data = encode(POST, b"tt", b"\xff" + b"a" * 95)
    assert StreamDecoder(len(data)).feed(data) == [Frame(POST, b"tt", b"\xff" + b"a" * 95)]
    assert isinstance(StreamDecoder(len(data) - 1).feed(data)[0], Oversized)
