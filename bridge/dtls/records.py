"""DTLS 1.2 record framing (RFC 6347 §4.1, §4.2.2), read without decrypting anything.

OpenSSL writes a whole flight into its memory BIO as one run of records; UDP needs
datagrams of at most the path MTU, each holding whole records (§4.1.1). A record
header is 13 bytes: content type, version, epoch, 48-bit sequence number, length.
Nothing here trusts its input: a truncated or garbled run still comes out as
datagrams (the peer's TLS stack judges them), and a ClientHello that cannot be read
is ``None``.
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Tuple

HEADER = 13  # record header
HANDSHAKE_HEADER = 12  # msg_type, length(3), message_seq(2), fragment_offset(3), fragment_length(3)
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO = 1
RANDOM = 32


def split_records(blob: bytes) -> List[bytes]:
    """The records of ``blob`` in order; a truncated tail is one last piece as it is."""
    records = []
    at, end = 0, len(blob)
    while at < end:
        if end - at < HEADER:
            records.append(blob[at:])
            break
        size = HEADER + int.from_bytes(blob[at + 11:at + 13], "big")
        records.append(blob[at:at + size])
        at += size
    return records


def datagrams(blob: bytes, mtu: int) -> List[bytes]:
    """``blob``'s records packed in order into datagrams of at most ``mtu`` bytes (a
    record longer than that goes alone: OpenSSL fragments handshake messages to the
    MTU it was given, so only a peer's own oversized record could be). A run that fits
    is one datagram as it is (the common case: a flight, a record of application data)
    without being split first: packing its records in order gives the same."""
    if len(blob) <= mtu:
        return [blob] if blob else []
    out: List[bytes] = []
    current = b""
    for record in split_records(blob):
        if current and len(current) + len(record) > mtu:
            out.append(current)
            current = b""
        current += record
    if current:
        out.append(current)
    return out


def whole(datagram: bytes) -> bytes:
    """``datagram`` up to its first truncated record (a header that does not fit, or a
    length past the end), which RFC 6347 §4.1.2.7 says to discard. A memory BIO is a
    byte stream, not a datagram socket: were a truncated record handed to OpenSSL, it
    would wait for the rest and take the next datagram (maybe another peer's) as it."""
    at, end = 0, len(datagram)
    while end - at >= HEADER:
        size = HEADER + int.from_bytes(datagram[at + 11:at + 13], "big")
        if at + size > end:
            break
        at += size
    return datagram[:at] if at < end else datagram


DTLS_1_2 = b"\xfe\xfd"
SESSION_EPOCH = b"\x00\x01"  # renegotiation is off: a session's keys stay those of epoch 1
_PROTECTED = (ALERT, HANDSHAKE, APPLICATION_DATA)


@functools.lru_cache(maxsize=64)  # a handful of suites: asked once per handshake
def min_body(cipher: str) -> int:
    """The shortest protected record body OpenSSL cipher suite ``cipher`` can produce:
    explicit nonce and tag for AEAD (CCM_8: 8 + 8, GCM and CCM: 8 + 16, ChaCha20: 16),
    IV, MAC and padding for CBC. A shorter one is a forgery, and OpenSSL
    3.3 ends the session over it (4.0 drops it) instead of discarding it."""
    if "CCM8" in cipher:
        return 16
    if "CHACHA20" in cipher:
        return 16
    if "GCM" in cipher or "CCM" in cipher:
        return 24
    mac = 48 if cipher.endswith("SHA384") else 32 if cipher.endswith("SHA256") else 20
    # IV, then MAC and at least one padding byte in whole blocks (or, with
    # encrypt-then-MAC, one block and the MAC after it)
    return 16 + min(-(-(mac + 1) // 16) * 16, 16 + mac)


def protected(datagram: bytes, shortest: int = 0) -> Tuple[bytes, int, int]:
    """``encrypted_only``, with how many records it kept and the longest body (bytes),
    as a plain tuple (one per datagram): one ``SSL_read`` per record reads each whole
    (DTLS returns one record per call, and a record's plaintext is shorter than its
    body), and no more calls than that are made."""
    at, end = 0, len(datagram)
    kept: List[bytes] = []
    largest = 0
    while end - at >= HEADER:
        size = int.from_bytes(datagram[at + 11:at + 13], "big")
        stop = at + HEADER + size
        if stop > end:
            break  # truncated: this one and what follows are discarded (see ``whole``)
        if datagram[at + 1:at + 3] == DTLS_1_2 and datagram[at + 3:at + 5] == SESSION_EPOCH \
                and datagram[at] in _PROTECTED and size >= shortest:
            kept.append(datagram[at:stop])
            if size > largest:
                largest = size
        at = stop
    if len(kept) == 1:
        return kept[0], 1, largest
    return b"".join(kept), len(kept), largest


def last_type(datagram: bytes) -> Optional[int]:
    """The content type of the datagram's last whole record (None if it has none): only
    the headers are read."""
    at, end, last = 0, len(datagram), None
    while end - at >= HEADER:
        stop = at + HEADER + int.from_bytes(datagram[at + 11:at + 13], "big")
        if stop > end:
            break
        last = datagram[at]
        at = stop
    return last


def encrypted_only(datagram: bytes, shortest: int = 0) -> bytes:
    """The records of ``datagram`` an established session's keys protect: DTLS 1.2,
    epoch 1, alert, handshake or application data; whole and in order. Anything else
    can only be a late copy of the handshake or a forgery from anyone able to send a
    datagram with the session's source address: OpenSSL would answer a garbled epoch-0
    record with a fatal alert (ending the session), and would hold a record of a later
    epoch for keys that never come, so it sees none of them. (A lost last flight is
    still retransmitted: the client's Finished, which prompts that, is in epoch 1.)"""
    return protected(datagram, shortest)[0]


def content_type(datagram: bytes) -> Optional[int]:
    """The content type of the datagram's first record, or None if it has no header."""
    if len(datagram) < HEADER:
        return None
    return datagram[0]


def epoch(datagram: bytes) -> int:
    return int.from_bytes(datagram[3:5], "big") if len(datagram) >= HEADER else -1


class ClientHello(NamedTuple):
    random: bytes  # the client's 32 random bytes: a retransmission repeats them
    cookie: bytes  # empty in the first ClientHello, the server's cookie in the second
    sequence: bytes = b""  # its record's epoch and sequence number (8 bytes)
    # read whole: one unfragmented message within its record, DTLS record version,
    # message_seq at most 2, session id at most 32 bytes; what ``DTLSv1_listen``
    # checks before it answers with a HelloVerifyRequest (else that is OpenSSL's to read)
    plain: bool = False
    alone: bool = False  # its record is the whole datagram (``whole`` would keep it all)


HELLO_VERIFY_REQUEST = 3
DTLS_1_0 = b"\xfe\xff"  # a HelloVerifyRequest's versions (RFC 6347 §4.2.1, as OpenSSL)
MAX_SESSION_ID = 32
MAX_COOKIE = 255


def client_hello(datagram: bytes) -> Optional[ClientHello]:
    """The first record's ClientHello (epoch 0, first fragment), or None."""
    end = len(datagram)
    if end < HEADER + HANDSHAKE_HEADER + 2 + RANDOM + 2:
        return None
    if datagram[0] != HANDSHAKE or datagram[3:5] != b"\0\0":
        return None
    body = HEADER
    if datagram[body] != CLIENT_HELLO or datagram[body + 6:body + 9] != b"\0\0\0":
        return None
    at = body + HANDSHAKE_HEADER + 2  # after client_version
    random = datagram[at:at + RANDOM]
    at += RANDOM
    session_id = datagram[at]
    at += 1 + session_id
    if at >= end:
        return None
    size = datagram[at]
    cookie = datagram[at + 1:at + 1 + size]
    if len(cookie) != size:
        return None
    record = int.from_bytes(datagram[11:13], "big")
    length = datagram[body + 1:body + 4]
    plain = (datagram[1] == 0xFE and length == datagram[body + 9:body + 12]
             and HANDSHAKE_HEADER + int.from_bytes(length, "big") <= record
             and HEADER + record <= end and datagram[body + 4] == 0
             and datagram[body + 5] <= 2 and session_id <= MAX_SESSION_ID
             and at + 1 + size <= HEADER + record)
    # built as the tuple it is (the NamedTuple's own __new__ is a Python call)
    return _tuple(ClientHello, (random, cookie, datagram[3:11], plain,
                                HEADER + record == end))


_tuple = tuple.__new__


def hello_verify_request(hello: ClientHello, cookie: bytes) -> bytes:
    """The HelloVerifyRequest answering ``hello`` with ``cookie`` (RFC 6347 §4.2.1): one
    record with the ClientHello's sequence number, message_seq 0, unfragmented; the
    bytes OpenSSL's ``DTLSv1_listen`` writes for the same cookie."""
    body = DTLS_1_0 + bytes([len(cookie)]) + cookie
    size = len(body).to_bytes(3, "big")
    message = bytes([HELLO_VERIFY_REQUEST]) + size + b"\0\0\0\0\0" + size + body
    return (bytes([HANDSHAKE]) + DTLS_1_0 + hello.sequence
            + len(message).to_bytes(2, "big") + message)
