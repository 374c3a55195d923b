"""Block-wise transfers (RFC 7959): bounded Block1 reassembly and stateless Block2 slicing.

txThings keeps per-transfer state for both directions without bounds or
expiry (defects W8, D11-D13 in ../shared/spec/txthings-notes.md). Here:

* Block1 uploads are reassembled per (peer, path, query), in order only
  (4.08 otherwise), at most ``max_body`` bytes (4.13 with Size1), at most
  ``MAX_UPLOADS`` at once, each forgotten ``BLOCK1_LIFETIME`` seconds after
  its last block.
* Block2 keeps nothing: block N of an answer is block N of the body the
  handler gives for the request, so random access works; a body cut into
  blocks carries an ETag (RFC 7959 §2.4).
* BERT (RFC 8323 §6, reliable transports whose two CSMs offer it): a Block
  option with SZX 7 numbers 1024-byte blocks, and one message carries any
  multiple of them (the last block: any length). An upload's BERT block moves
  its next number on by the 1024-byte blocks it carried; ``slice_bert`` cuts an
  answer in BERT blocks of a length the transport gives (what the peer's
  Max-Message-Size takes). The datagram transports refuse SZX 7 (4.02).
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, Optional, Tuple, Union

from ..core import codes
from .message import Message, make_response, set_options
from .options import BERT, BERT_UNIT, BLOCK2, ETAG, SIZE1, SIZE2, Block, encode_uint

BLOCK1_LIFETIME = 60.0  # s a partial Block1 upload is kept
MAX_UPLOADS = 1000  # Block1 uploads in progress at once
BLOCK_SIZE_EXP = codes.BLOCK_SIZE.bit_length() - 5  # W7: 1024-byte blocks (SZX 6)
CONTINUE = 95  # 2.31
REQUEST_ENTITY_INCOMPLETE = 136  # 4.08

# An answer that is not the body: a code, a diagnostic and the options to send with it.
Refusal = Tuple[int, bytes, Dict[str, Any]]


class _Upload:
    """A Block1 upload in progress."""

    __slots__ = ("szx", "next_num", "deadline", "body")

    def __init__(self, szx: int, deadline: float):
        self.szx = szx
        self.next_num = 0
        self.deadline = deadline
        self.body = bytearray()


class Uploads:
    """Block1 uploads in progress, bounded in number, size and time (oldest deadline
    first: a block moves its upload to the end)."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self._uploads: "OrderedDict[Tuple[Any, ...], _Upload]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._uploads)

    def collect(self, peer: Hashable, request: Message, block1: Block,
                now: float) -> Union[bytes, Refusal]:
        """The whole body once the last block is in; otherwise what to answer this block."""
        key = (peer, request.uri_path, request.uri_query)
        if block1.number == 0:
            size1 = request.uint(SIZE1)
            if size1 is not None and size1 > self.max_body:
                return self._too_large(None)
            self._uploads.pop(key, None)
            upload = _Upload(block1.szx, now + BLOCK1_LIFETIME)
            self._uploads[key] = upload
            while len(self._uploads) > MAX_UPLOADS:
                self._uploads.popitem(last=False)
        else:
            found = self._uploads.get(key)
            if found is None or block1.number != found.next_num or block1.szx != found.szx:
                self._uploads.pop(key, None)
                return REQUEST_ENTITY_INCOMPLETE, b"block out of order", {}
            upload = found
        payload = request.payload
        if block1.more and len(payload) != block1.size and not (
                block1.szx == BERT and payload and not len(payload) % BERT_UNIT):
            self._uploads.pop(key, None)
            return codes.BAD_REQUEST, b"a block that is not the last must be full", {}
        upload.body += payload
        if len(upload.body) > self.max_body:
            return self._too_large(key)
        if block1.more:
            upload.next_num += 1 if block1.szx != BERT else len(payload) // BERT_UNIT
            upload.deadline = now + BLOCK1_LIFETIME
            self._uploads.move_to_end(key)
            return CONTINUE, b"", {"block1": Block(block1.number, True, block1.szx)}
        del self._uploads[key]
        return bytes(upload.body)

    def _too_large(self, key: Optional[Tuple[Any, ...]]) -> Refusal:
        if key is not None:
            self._uploads.pop(key, None)
        return codes.REQUEST_ENTITY_TOO_LARGE, b"body too large", {"size1": self.max_body}

    def next_deadline(self) -> Optional[float]:
        for upload in self._uploads.values():
            return upload.deadline
        return None

    def expire(self, now: float) -> None:
        uploads = self._uploads
        while uploads:
            key, upload = next(iter(uploads.items()))
            if upload.deadline > now:
                break
            del uploads[key]

    def clear(self) -> None:
        self._uploads.clear()


class LargeBody:
    """A body read block by block instead of held whole (a firmware package).

    ``read(start, length)`` returns those bytes; ``tag`` is the ETag of every
    block (fixed for the package's title and version).
    """

    __slots__ = ("size", "read", "tag")

    def __init__(self, size: int, read: Callable[[int, int], bytes], tag: Optional[bytes]):
        self.size = size
        self.read = read
        self.tag = tag


def etag(body: bytes) -> bytes:
    """An entity tag of ``body``: blocks of one representation carry the same one."""
    return struct.pack("!I", zlib.crc32(body))


def block_size_exponent(asked: Optional[Block], room: Optional[int], size: int) -> int:
    """The SZX to answer with: the client's (at most ours), made smaller while the answer
    would not fit ``room`` bytes (the amplification limit; None: no limit)."""
    szx = min(asked.szx, BLOCK_SIZE_EXP) if asked is not None else BLOCK_SIZE_EXP
    if room is not None:
        while szx > 0 and size > room and (1 << (szx + 4)) > room:
            szx -= 1
    return szx


def block_options(message: Message, number: int, szx: int, size: int,
                  tag: Optional[bytes]) -> Message:
    """``message`` (its payload the block) as block ``number`` (of 2**(szx+4) bytes, or
    of BERT's 1024-byte blocks) of a body of ``size`` bytes: with Block2, Size2 on the
    first block, and ETag ``tag`` (RFC 7959 §2.2, §2.4)."""
    start = number << (szx + 4) if szx != BERT else number * BERT_UNIT
    added = [(BLOCK2, Block(number, start + len(message.payload) < size, szx).encode())]
    if tag is not None:
        added.append((ETAG, tag))
    if number == 0:
        added.append((SIZE2, encode_uint(size)))
    return set_options(message, added)


def slice_response(message: Message, number: int, szx: int,
                   large: Optional[LargeBody]) -> Message:
    """Block ``number`` of ``message`` (its payload or ``large``) in blocks of 2**(szx+4).

    An answer that fits one block and was asked as block 0 goes whole. A block
    past the end of a body gets 4.02 (RFC 7959 §2.2); an error answer asked as
    a later block goes as it is, so the client sees the real code.
    """
    block = 1 << (szx + 4)
    return _sliced(message, number, szx, number * block, block, large)


def slice_bert(message: Message, number: int, length: int,
               large: Optional[LargeBody]) -> Message:
    """BERT block ``number`` (counted in 1024-byte blocks) of ``message``: ``length`` bytes
    from there (a multiple of 1024), or the rest (RFC 8323 §6); otherwise as
    ``slice_response``."""
    return _sliced(message, number, BERT, number * BERT_UNIT, length, large)


def _sliced(message: Message, number: int, szx: int, start: int, block: int,
            large: Optional[LargeBody]) -> Message:
    """The block of ``block`` bytes at ``start`` (block ``number`` of exponent ``szx``)."""
    size = large.size if large is not None else len(message.payload)
    if size <= block and number == 0:
        if large is None:
            return message
        whole = message._replace(payload=large.read(0, size))
        return whole if large.tag is None else set_options(whole, [(ETAG, large.tag)])
    if message.code >= codes.BAD_REQUEST:
        return message
    if start >= size and number > 0:
        return make_response(codes.BAD_OPTION, b"block beyond the end", codes.TEXT_PLAIN)
    if large is not None:
        part = message._replace(payload=large.read(start, block))
        return block_options(part, number, szx, size, large.tag)
    body = message.payload
    return block_options(message._replace(payload=body[start:start + block]), number, szx,
                         size, etag(body))
