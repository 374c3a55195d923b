"""DTLS 1.2 record framing (RFC 6347 §4.1, §4.2.2), read without decrypting anything.

OpenSSL writes a whole flight into its memory BIO as one run of records; UDP needs
datagrams of at most the path MTU, each holding whole records (§4.1.1). A record
header is 13 bytes: content type, version, epoch, 48-bit sequence number, length.
Nothing here trusts its input: a truncated or garbled run still comes out as
datagrams (the peer's TLS stack judges them), and a ClientHello that cannot be read
is ``None``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

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
    MTU it was given, so only a peer's own oversized record could be)."""
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


def client_hello(datagram: bytes) -> Optional[ClientHello]:
    """The first record's ClientHello (epoch 0, first fragment), or None."""
    if len(datagram) < HEADER + HANDSHAKE_HEADER + 2 + RANDOM + 2:
        return None
    if datagram[0] != HANDSHAKE or epoch(datagram) != 0:
        return None
    body = HEADER
    if datagram[body] != CLIENT_HELLO or datagram[body + 6:body + 9] != b"\0\0\0":
        return None
    at = body + HANDSHAKE_HEADER + 2  # after client_version
    random = datagram[at:at + RANDOM]
    at += RANDOM
    session_id = datagram[at]
    at += 1 + session_id
    if at >= len(datagram):
        return None
    size = datagram[at]
    cookie = datagram[at + 1:at + 1 + size]
    if len(cookie) != size:
        return None
    return ClientHello(random, cookie)
