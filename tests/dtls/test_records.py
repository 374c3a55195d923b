"""DTLS record framing: flights split into datagrams, ClientHellos read without OpenSSL."""

import random

from bridge.dtls import records


def record(ctype: int, body: bytes, epoch: int = 0, seq: int = 0,
           version: bytes = b"\xfe\xfd") -> bytes:
    return (bytes([ctype]) + version + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
            + len(body).to_bytes(2, "big") + body)


def hello(random_bytes: bytes, cookie: bytes = b"", session_id: bytes = b"") -> bytes:
    body = (b"\xfe\xfd" + random_bytes + bytes([len(session_id)]) + session_id
            + bytes([len(cookie)]) + cookie + b"\x00\x02\xc0\xae\x01\x00")
    handshake = (bytes([records.CLIENT_HELLO]) + len(body).to_bytes(3, "big") + b"\x00\x00"
                 + b"\x00\x00\x00" + len(body).to_bytes(3, "big") + body)
    return record(records.HANDSHAKE, handshake)


def test_a_flight_is_split_on_record_boundaries_into_datagrams_within_the_mtu():
    flight = [record(22, bytes([n]) * size, seq=n) for n, size in enumerate((300, 500, 200, 900, 10))]
    blob = b"".join(flight)
    for mtu in (400, 1232):
        out = records.datagrams(blob, mtu)
        assert b"".join(out) == blob
        assert all(len(d) <= mtu for d in out if len(records.split_records(d)) > 1)
        for datagram in out:  # only whole records, in order
            assert all(r in flight for r in records.split_records(datagram))
    assert len(records.datagrams(blob, 1232)) == 2  # 313+513+213 | 913+23
    assert records.datagrams(blob, 100) == flight  # a record longer than the MTU goes alone


def test_a_truncated_or_random_run_still_comes_out_whole():
    rng = random.Random(5)
    for _ in range(2000):
        blob = rng.randbytes(rng.randrange(0, 3000))
        assert b"".join(records.datagrams(blob, 1232)) == blob
        assert b"".join(records.split_records(blob)) == blob


def test_client_hello_gives_its_random_and_cookie():
    rnd = bytes(range(32))
    first = records.client_hello(hello(rnd))
    assert first == records.ClientHello(rnd, b"", bytes(8), True, True)
    second = records.client_hello(hello(rnd, b"C" * 16, session_id=b"S" * 32))
    assert second.random == rnd and second.cookie == b"C" * 16


def test_a_client_hello_is_alone_only_when_its_record_is_the_whole_datagram():
    good = hello(bytes(32))
    assert records.client_hello(good).alone and records.whole(good) == good
    for tail in (record(22, b"x" * 20), record(22, b"x" * 20)[:-1], b"\x16\xfe"):
        found = records.client_hello(good + tail)
        assert found is not None and found.plain and not found.alone
    assert records.whole(good + record(22, b"x" * 20)[:-1]) == good


def test_anything_else_is_not_a_client_hello():
    rnd = bytes(32)
    good = hello(rnd)
    assert records.client_hello(record(23, b"x" * 80)) is None  # application data
    assert records.client_hello(record(22, good[13:], epoch=1)) is None  # encrypted epoch
    assert records.client_hello(good[:40]) is None  # truncated
    second_fragment = bytearray(good)
    second_fragment[13 + 8] = 1  # fragment_offset 1
    assert records.client_hello(bytes(second_fragment)) is None
    rng = random.Random(9)
    for _ in range(5000):  # never raises
        records.client_hello(rng.randbytes(rng.randrange(0, 120)))


def test_an_established_session_gets_only_records_past_epoch_0():
    late = record(22, b"\x10" * 40, epoch=0, seq=5)  # a late ClientKeyExchange, or a forgery
    finished = record(22, b"\x99" * 40, epoch=1, seq=0)
    data = record(23, b"\xaa" * 30, epoch=1, seq=7)
    assert records.encrypted_only(late + record(20, b"\x01") + finished) == finished
    assert records.encrypted_only(data) == data
    assert records.encrypted_only(late) == b""
    assert records.encrypted_only(b"\x17\xfe") == b""  # a truncated header
    assert records.encrypted_only(record(23, b"x" * 30, epoch=2)) == b""  # keys never come
    assert records.encrypted_only(record(23, b"x" * 30, epoch=1, version=b"\xfe\xff")) == b""
    assert records.encrypted_only(record(24, b"x" * 30, epoch=1)) == b""  # heartbeat


def test_a_truncated_record_and_what_follows_it_are_cut_off():
    one = record(22, b"a" * 20)
    two = record(23, b"b" * 30, epoch=1)
    assert records.whole(one + two) == one + two
    assert records.whole(one + two[:-1]) == one  # the second record's length runs past the end
    assert records.whole(one + two[:5]) == one  # a header that does not fit
    # a record one byte short takes the next one's first byte; then that one is truncated
    assert records.whole(two[:-1] + one) == (two[:-1] + one)[:43]
    longer = bytearray(one)
    longer[12] += 1  # claims one byte more than it has
    # framed by its (wrong) length: 34 bytes, then a record that no longer fits
    assert records.whole(bytes(longer) + one) == (bytes(longer) + one)[:34]
    assert records.whole(b"") == b""


def test_a_record_shorter_than_its_cipher_can_make_is_dropped():
    assert records.min_body("PSK-AES128-CCM8") == 16
    assert records.min_body("ECDHE-ECDSA-AES128-GCM-SHA256") == 24
    assert records.min_body("ECDHE-PSK-AES128-CBC-SHA256") == 64
    assert records.min_body("PSK-AES128-CBC-SHA") == 48
    short = record(22, b"x" * 21, epoch=1)
    assert records.encrypted_only(short, 24) == b""
    assert records.encrypted_only(short, 16) == short


def test_last_type_is_that_of_the_last_whole_record():
    finished = record(22, b"f" * 40, epoch=1)
    data = record(20, b"\x01") + finished
    assert records.last_type(data) == 22
    assert records.last_type(data + record(23, b"x" * 30, epoch=1)) == 23
    assert records.last_type(data + b"\x17\xfe\xfd\x00") == 22  # a truncated tail is not one
    assert records.last_type(b"") is None
