"""The CoAP engine: txThings' message codec, with our own request pipeline around it.

txThings 0.3.0 (pinned) decodes and encodes messages and options. Its
request machinery (``Responder``, blockwise state, retransmission on the
global reactor) fails on real and hostile traffic, so ``BridgeCoap``
overrides it. Defect numbers refer to ../shared/spec/txthings-notes.md; each
has a regression test in tests/edge/test_coap_engine.py.

* W1  ``QuietLog``: txThings formats ~9 legacy log lines per datagram; drop
  them, keep its error reports.
* W2  ``datagramReceived``: malformed datagrams (short, bad version, TKL 9-15,
  broken options, payload marker without payload, reserved classes,
  non-empty "empty" messages) are answered with RST when confirmable and
  otherwise dropped, without a traceback.
* W3  unknown critical options get 4.02; Proxy-Uri/Proxy-Scheme get 5.05.
* W5  a slow answer gets an empty ACK without token (CON requests only), then
  a separate CON response that is retransmitted until acknowledged. One timer
  serves all requests waiting for an answer (``_awaiting``), not one each. A
  GET waits ``GET_ACK_DELAY`` for its answer before the empty ACK, since its
  answer may be a first block (libcoap cannot take one in a separate response).
* W6  a failing handler always answers 5.00 (and the failure is logged once).
* W7  1024-byte blocks instead of 64.
* W8, D11, D12, D13  ``processRequest``: blockwise transfers are handled here,
  statelessly for Block2 (block N of the answer is block N, random access
  works) and with bounded, expiring reassembly for Block1 (2.31 Continue,
  4.08 out of order, 4.13 past ``max_body``).
* W9  ``listen()`` uses a 65535-byte receive buffer, so big datagrams are not
  truncated.
* W10 ``Deduplicator``: (mid, peer) -> encoded response only, expired in time
  buckets by one LoopingCall instead of one DelayedCall per datagram.
* W11 ``FixedBlockOption``: Block options of value 0 are encoded correctly.
* A body cut into blocks carries an ETag (a checksum of the whole body), so a
  client can tell blocks of two representations apart (RFC 7959 §2.4); an
  observe notification longer than its block goes as its first block, and
  the device GETs the rest (RFC 7959 §2.6, answered by the core).
* D28 ``ConfirmableSender``: CON exchanges are keyed by (mid, peer), so an ACK
  from another peer cannot cancel a retransmission.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import txthings.coap as txcoap
import txthings.resource as txresource
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.task import LoopingCall

from ..core import codes
from ..logs import logger

log = logger("coap")

# Options this server understands (RFC 7252 §5.4.1: odd numbers are critical).
UNDERSTOOD_CRITICAL = frozenset({3, 7, 11, 15, 17, 23, 27})
PROXY_OPTIONS = frozenset({35, 39})
# Allowed value lengths of the critical options we understand (RFC 7252 §5.10, RFC 7959).
OPTION_LENGTHS = {3: (1, 255), 7: (0, 2), 11: (0, 255), 15: (0, 255), 17: (0, 2), 23: (0, 3),
                  27: (0, 3)}
BLOCK_SIZE_EXP = codes.BLOCK_SIZE.bit_length() - 5  # W7: 1024-byte blocks (SZX 6)
RECEIVE_BUFFER = 65535  # W9
CONTINUE = 95  # 2.31
REQUEST_ENTITY_INCOMPLETE = 136  # 4.08
BLOCK1_LIFETIME = 60.0  # s a partial Block1 upload is kept
MAX_UPLOADS = 1000  # Block1 uploads in progress at once
# A GET's answer may be the first block of a long body (a package, large attributes),
# and libcoap before 4.3.5 drops such a block when it comes as a separate response
# ("large body receive internal issue", obgm/libcoap#1595): the download then hangs.
# So a GET is answered in its ACK however long the answer takes (the client retransmits
# meanwhile; duplicates are ignored); only one still unanswered after this many seconds,
# well before a client gives up (MAX_TRANSMIT_WAIT, 93 s), gets the empty ACK.
GET_ACK_DELAY = 30.0
AMPLIFICATION = 3  # an unverified peer gets at most this many times its request's size
MAX_VERIFIED = 100_000  # peers remembered as verified

Handler = Callable[[txcoap.Message], defer.Deferred]


class QuietLog:
    """W1: stands in for ``twisted.python.log`` inside txThings."""

    def msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def err(self, failure: Any = None, why: Optional[str] = None, **kwargs: Any) -> None:
        log.failure(why or "txThings internal error", failure=failure)


class Malformed(Exception):
    """A datagram that violates RFC 7252 §3 message format."""


def inspect(data: bytes) -> List[int]:
    """Check the message format and return the option numbers in order.

    Raises ``Malformed`` for format errors that txThings would mis-parse or
    crash on. The header (4 bytes, version 1) is checked by the caller.
    """
    tkl = data[0] & 0x0F
    if tkl > 8:
        raise Malformed("token length %d" % tkl)
    code = data[1]
    if code >> 5 in (1, 6, 7):
        raise Malformed("reserved code class %d" % (code >> 5))
    pos = 4 + tkl
    end = len(data)
    if pos > end:
        raise Malformed("token truncated")
    if code == 0:
        if end != 4 or tkl:
            raise Malformed("empty message with token or options")
        return []
    numbers: List[int] = []
    number = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == end:
                raise Malformed("payload marker without payload")
            break
        delta, length = byte >> 4, byte & 0x0F
        values = []
        for nibble in (delta, length):
            if nibble == 13:
                if pos + 1 > end:
                    raise Malformed("option extension truncated")
                values.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                if pos + 2 > end:
                    raise Malformed("option extension truncated")
                values.append(((data[pos] << 8) | data[pos + 1]) + 269)
                pos += 2
            elif nibble == 15:
                raise Malformed("reserved option nibble 15")
            else:
                values.append(nibble)
        number += values[0]
        pos += values[1]
        if pos > end:
            raise Malformed("option %d value truncated" % number)
        numbers.append(number)
        low, high = OPTION_LENGTHS.get(number, (0, 65535))
        if not low <= values[1] <= high:
            numbers.append(-number)  # out-of-range length: as unrecognized (RFC 7252 §5.4.3)
    return numbers


Slot = Tuple[str, int]  # a deduplication key and its shard


class Deduplicator:
    """W10: remembers (mid, peer) of recent CON/NON requests and the encoded first response.

    Entries live between ``lifetime`` and ``lifetime + bucket`` seconds; one
    ``sweep()`` per bucket interval drops whole buckets.

    A busy server holds millions of entries (EXCHANGE_LIFETIME is 247 s: three
    million at 12,000 requests/s), so:

    * they are kept out of the garbage collector's sight: keys are strings,
      values bytes, and a closed bucket is a tuple of strings and the bytes of
      their shards, none of which the collector tracks (tuple keys made every
      full collection walk all of them);
    * they are spread over ``SHARDS`` dicts, chosen by the key's hash (one byte
      per entry in a closed bucket says which): one dict of
      millions of keys, with keys coming and going, now and then rebuilds
      itself in one go, and that stopped everything for half a second.
    """

    # 16: the rebuild of one shard of three million entries stops the reactor for
    # 30 ms, not 500; shards cost PyPy (16: 15 % of the engine's rate, 256: 25 %)
    SHARDS = 16

    def __init__(self, lifetime: float, bucket: float = 0.25):
        self.lifetime = lifetime
        self.bucket = bucket
        self._shards: List[Dict[str, Optional[bytes]]] = [{} for _ in range(self.SHARDS)]
        self._open_keys: List[str] = []  # the newest bucket
        self._open_shards = bytearray()
        self._opened = float("-inf")  # when the newest bucket started
        self._buckets: Deque[Tuple[float, Tuple[str, ...], bytes]] = deque()  # closed ones

    @staticmethod
    def slot(mid: int, remote: Any) -> Slot:
        key = "%s %d %d" % (remote[0], remote[1], mid)
        return key, hash(key) & 0x0F  # str hashes are cached: the dict reuses it

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def responses(self) -> List[Optional[bytes]]:
        return [data for shard in self._shards for data in shard.values()]

    def seen(self, slot: Slot, now: float) -> bool:
        """True for a duplicate; otherwise remember ``slot`` and return False."""
        key, index = slot
        shard = self._shards[index]
        if key in shard:
            return True
        shard[key] = None
        if self._opened + self.bucket <= now:
            self._close()
            self._opened = now
        self._open_keys.append(key)
        self._open_shards.append(index)
        return False

    def response(self, slot: Slot) -> Optional[bytes]:
        return self._shards[slot[1]].get(slot[0])

    def remember_response(self, slot: Slot, data: bytes) -> None:
        shard = self._shards[slot[1]]
        if shard.get(slot[0], data) is None:
            shard[slot[0]] = data

    def sweep(self, now: float) -> None:
        horizon = now - self.lifetime
        if self._opened + self.bucket <= horizon:
            self._close()
        shards = self._shards
        while self._buckets and self._buckets[0][0] + self.bucket <= horizon:
            _, keys, indexes = self._buckets.popleft()
            for key, index in zip(keys, indexes):
                shards[index].pop(key, None)

    def _close(self) -> None:
        if self._open_keys:
            self._buckets.append((self._opened, tuple(self._open_keys),
                                  bytes(self._open_shards)))
            self._open_keys = []
            self._open_shards = bytearray()


class FixedBlockOption(txcoap.BlockOption):
    """W11: txThings computes the length of a Block option as a float; value 0 came out corrupt."""

    @property
    def length(self) -> int:  # type: ignore[override]
        return len(self.encode())


class ConfirmableSender:
    """Sends CON messages and retransmits them until ACK or RST (RFC 7252 §4.2).

    Exchanges are keyed by (message ID, peer), so an ACK from anyone else cannot
    stop a retransmission (D28). ``on_result(ref, outcome)`` hears "ack",
    "reset" or "timeout" for messages sent with a ``ref``, and "reset" for an
    RST to a recent NON message sent with one.
    """

    def __init__(self, protocol: "BridgeCoap", clock: IReactorTime, rng: random.Random,
                 ack_timeout: float = txcoap.ACK_TIMEOUT, max_retransmit: int = txcoap.MAX_RETRANSMIT):
        self.protocol = protocol
        self.clock = clock
        self.rng = rng
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.on_result: Callable[[int, str], None] = lambda ref, outcome: None
        self.exchanges: Dict[Tuple[int, Any], List[Any]] = {}
        self.recent_non: "OrderedDict[Tuple[int, Any], int]" = OrderedDict()

    def send(self, message: txcoap.Message, ref: Optional[int] = None) -> None:
        if message.mid is None:
            message.mid = self.protocol.nextMessageID()
        data = message.encode()
        address, port = message.remote
        target = (str(address), port)
        self.protocol.transport.write(data, target)
        key = (message.mid, message.remote)
        if message.mtype == txcoap.CON:
            timeout = self.rng.uniform(self.ack_timeout, self.ack_timeout * txcoap.ACK_RANDOM_FACTOR)
            call = self.clock.callLater(timeout, self._retransmit, key)
            self.exchanges[key] = [ref, data, target, 0, timeout, call]
        elif ref is not None:
            self.recent_non[key] = ref
            if len(self.recent_non) > 4096:
                self.recent_non.popitem(last=False)

    def notify(self, ref: int, remote: Any, token: bytes, confirmable: bool, code: int,
               payload: bytes, observe: int, block_size: int = codes.BLOCK_SIZE) -> None:
        message = txcoap.Message(mtype=txcoap.CON if confirmable else txcoap.NON, code=code,
                                 payload=payload, token=token)
        message.opt.observe = observe
        if payload:
            message.opt.content_format = codes.APPLICATION_JSON
        if len(payload) > block_size:  # the first block; the device GETs the others
            message.payload = payload[:block_size]
            mark_block(message, 0, block_size.bit_length() - 5, len(payload), etag(payload))
        message.remote = remote
        self.send(message, ref)

    def answered(self, mid: int, remote: Any, mtype: int) -> bool:
        key = (mid, remote)
        exchange = self.exchanges.pop(key, None)
        if exchange is not None:
            if exchange[5].active():
                exchange[5].cancel()
            if exchange[0] is not None:
                self.on_result(exchange[0], "ack" if mtype == txcoap.ACK else "reset")
            return True
        ref = self.recent_non.pop(key, None)
        if ref is not None and mtype == txcoap.RST:
            self.on_result(ref, "reset")
            return True
        return False

    def _retransmit(self, key: Tuple[int, Any]) -> None:
        exchange = self.exchanges.get(key)
        if exchange is None:
            return
        ref, data, target, count, timeout, _ = exchange
        if count >= self.max_retransmit:
            del self.exchanges[key]
            log.info("CON message to {peer} unacknowledged after {count} retransmissions",
                     peer="%s:%d" % target, count=count)
            if ref is not None:
                self.on_result(ref, "timeout")
            return
        self.protocol.transport.write(data, target)
        exchange[3] = count + 1
        exchange[4] = timeout * 2
        exchange[5] = self.clock.callLater(timeout * 2, self._retransmit, key)

    def stop(self) -> None:
        for exchange in self.exchanges.values():
            if exchange[5].active():
                exchange[5].cancel()
        self.exchanges.clear()


@dataclass
class _Upload:
    """A Block1 upload in progress (RFC 7959 §2.5)."""

    szx: int
    next_num: int
    deadline: float
    body: bytearray = field(default_factory=bytearray)


class BridgeCoap(txcoap.Coap):
    """txThings' protocol class with our own request pipeline (see the module docstring)."""

    def __init__(self, handler: Handler, clock: IReactorTime, empty_ack_delay: float = 0.5,
                 exchange_lifetime: float = txcoap.EXCHANGE_LIFETIME, max_body: int = 65536,
                 rng: Optional[random.Random] = None, ack_timeout: float = txcoap.ACK_TIMEOUT,
                 max_retransmit: int = txcoap.MAX_RETRANSMIT):
        # txThings' resource tree is not used: every request goes to ``handler``
        super().__init__(txresource.Endpoint(txresource.CoAPResource()))
        self.handler = handler
        self.clock = clock
        self.empty_ack_delay = empty_ack_delay
        self.max_body = max_body
        self.dedup = Deduplicator(exchange_lifetime)
        self.sender = ConfirmableSender(self, clock, rng or random.Random(), ack_timeout,
                                        max_retransmit)
        self.uploads: "OrderedDict[Tuple[Any, ...], _Upload]" = OrderedDict()
        # Peers known to receive what we send (RFC 7252 §11.3): they acknowledged one of
        # our CON messages or asked for a later block of an answer.
        self.verified: "OrderedDict[Any, None]" = OrderedDict()
        self.malformed = 0
        # CON requests not yet answered, in arrival order, so in order of their empty-ACK
        # deadline: [deadline, request]; the request is None once it is answered
        self._awaiting: Deque[List[Any]] = deque()
        self._awaiting_get: Deque[List[Any]] = deque()  # GETs: deadline GET_ACK_DELAY
        self._ack_call: Any = None  # the one timer, due at the earliest deadline
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def startProtocol(self) -> None:
        self._sweeper.start(self.dedup.bucket, now=False).addErrback(
            lambda f: log.failure("Deduplication sweeper stopped", failure=f))

    def stopProtocol(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        self._awaiting.clear()
        self._awaiting_get.clear()
        self.sender.stop()

    def _sweep(self) -> None:
        now = self.clock.seconds()
        self.dedup.sweep(now)
        for key in [k for k, u in self.uploads.items() if u.deadline <= now]:
            del self.uploads[key]

    # -- datagrams ------------------------------------------------------------------

    def datagramReceived(self, data: bytes, remote: Tuple[str, int]) -> None:
        if len(data) < 4 or data[0] >> 6 != 1:
            self._drop(remote, "short datagram or wrong version")
            return
        try:
            numbers = inspect(data)
            # the remote stays Twisted's (host, port) tuple: hashing and printing an
            # ipaddress object per datagram costs more than the rest of the decoding
            message = txcoap.Message.decode(data, (remote[0], remote[1]), self)
            block1, block2 = message.opt.block1, message.opt.block2
            message.size = len(data)
        except (Malformed, ValueError, struct.error, IndexError) as exc:
            self._format_error(data, remote, str(exc))
            return
        if not isinstance(message.payload, bytes):
            message.payload = bytes(message.payload, "latin-1") if message.payload else b""
        if self.deduplicateMessage(message):
            return
        code = message.code
        if 1 <= code < 32:
            if message.mtype not in (txcoap.CON, txcoap.NON):
                self._drop(remote, "request code in an ACK or RST")
                return
            rejected = self._reject_options(numbers, block1, block2)
            if rejected is not None:
                self.answer(message, *rejected)
                return
            self.processRequest(message)
        elif code >= 64:
            self.processResponse(message)
        elif message.mtype in (txcoap.ACK, txcoap.RST):
            if self.sender.answered(message.mid, message.remote, message.mtype):
                self.verify(message.remote)
            else:
                self.processEmpty(message)
        else:
            self.processEmpty(message)  # CON ping: RST

    def _reject_options(self, numbers: List[int], block1: Any,
                        block2: Any) -> Optional[Tuple[int, bytes]]:
        for number in numbers:
            if number < 0:
                return codes.BAD_OPTION, b"option %d has a length out of range" % -number
            if number in PROXY_OPTIONS:
                return codes.PROXYING_NOT_SUPPORTED, b"proxying is not supported"
            if number & 1 and number not in UNDERSTOOD_CRITICAL:
                return codes.BAD_OPTION, b"unrecognized critical option %d" % number
        for block in (block1, block2):
            if block is not None and block.size_exponent == 7:
                return codes.BAD_OPTION, b"block size exponent 7 is reserved"
        return None

    def verify(self, remote: Any) -> None:
        self.verified[remote] = None
        self.verified.move_to_end(remote)
        while len(self.verified) > MAX_VERIFIED:
            self.verified.popitem(last=False)

    def is_verified(self, remote: Any) -> bool:
        return remote in self.verified

    def answer(self, request: txcoap.Message, code: int, diagnostic: bytes = b"",
               **options: Any) -> None:
        """Answer ``request`` at once (piggybacked for CON) with a code and diagnostic text."""
        response = make_response(code, diagnostic, codes.TEXT_PLAIN if diagnostic else None,
                                 **options)
        self._send_response(response, request, echo_block1=False)
        log.debug("Answered {code} to {peer}: {reason}", peer=_peer(request.remote),
                  code=codes.dotted(code), reason=diagnostic.decode(errors="replace"))

    def _format_error(self, data: bytes, remote: Tuple[str, int], reason: str) -> None:
        self.malformed += 1
        log.debug("Malformed datagram from {peer}: {reason}", peer="%s:%d" % remote[:2],
                  reason=reason)
        if (data[0] >> 4) & 0x03 == txcoap.CON:
            rst = bytes([0x70, 0, data[2], data[3]])
            self.transport.write(rst, remote[:2])

    def _drop(self, remote: Tuple[str, int], reason: str) -> None:
        self.malformed += 1
        log.debug("Dropped datagram from {peer}: {reason}", peer="%s:%d" % remote[:2],
                  reason=reason)

    def deduplicateMessage(self, message: txcoap.Message) -> bool:
        if message.mtype not in (txcoap.CON, txcoap.NON):
            return False  # duplicate ACK/RST find no exchange and are harmless
        key = self.dedup.slot(message.mid, message.remote)
        if not self.dedup.seen(key, self.clock.seconds()):
            return False
        cached = self.dedup.response(key)
        if message.mtype == txcoap.CON and cached is not None:
            address, port = message.remote
            self.transport.write(cached, (str(address), port))
        log.debug("Duplicate {mtype} mid {mid} from {peer}", mtype=txcoap.types[message.mtype],
                  mid=message.mid, peer=_peer(message.remote))
        return True

    def sendMessage(self, message: txcoap.Message) -> None:
        """Send a message; an ACK or RST is remembered as the answer to duplicates."""
        if message.mid is None:
            message.mid = self.nextMessageID()
        if isinstance(message.payload, str):
            message.payload = message.payload.encode("utf-8")
        if message.mtype == txcoap.CON:
            self.sender.send(message)
            return
        data = message.encode()
        address, port = message.remote
        self.transport.write(data, (str(address), port))
        if message.mtype in (txcoap.ACK, txcoap.RST):
            self.dedup.remember_response(self.dedup.slot(message.mid, message.remote), data)

    # -- requests ---------------------------------------------------------------------

    def processRequest(self, request: txcoap.Message) -> None:
        block1 = request.opt.block1
        if block1 is not None and not self._collect_block1(request, block1):
            return
        try:
            result = self.handler(request)
        except Exception:
            log.failure("Request handler raised for {peer}", peer=_peer(request.remote))
            self.answer(request, codes.INTERNAL_SERVER_ERROR, b"internal error")
            return
        waiting = None
        if request.mtype == txcoap.CON:
            waiting = self._await(request)
        d = result if isinstance(result, defer.Deferred) else defer.succeed(result)
        d.addCallback(_as_message)
        d.addCallback(self._respond, request, waiting)
        d.addErrback(self._failed, request, waiting)

    def _collect_block1(self, request: txcoap.Message, block1: Any) -> bool:
        """Gather a Block1 upload; True when ``request.payload`` holds the whole body."""
        key = (request.remote, tuple(request.opt.uri_path), tuple(request.opt.uri_query))
        size = 1 << (block1.size_exponent + 4)
        now = self.clock.seconds()
        size1 = _uint_option(request, txcoap.SIZE1)
        if block1.block_number == 0:
            if size1 is not None and size1 > self.max_body:
                self.answer(request, codes.REQUEST_ENTITY_TOO_LARGE, b"body too large",
                            size1=self.max_body)
                return False
            self.uploads.pop(key, None)
            upload = _Upload(block1.size_exponent, 0, now + BLOCK1_LIFETIME)
            self.uploads[key] = upload
            while len(self.uploads) > MAX_UPLOADS:
                self.uploads.popitem(last=False)
        else:
            upload = self.uploads.get(key)
            if upload is None or block1.block_number != upload.next_num \
                    or block1.size_exponent != upload.szx:
                self.uploads.pop(key, None)
                self.answer(request, REQUEST_ENTITY_INCOMPLETE, b"block out of order")
                return False
        if block1.more and len(request.payload) != size:
            self.uploads.pop(key, None)
            self.answer(request, codes.BAD_REQUEST, b"a block that is not the last must be full")
            return False
        upload.body += request.payload
        if len(upload.body) > self.max_body:
            self.uploads.pop(key, None)
            self.answer(request, codes.REQUEST_ENTITY_TOO_LARGE, b"body too large",
                        size1=self.max_body)
            return False
        if block1.more:
            upload.next_num += 1
            upload.deadline = now + BLOCK1_LIFETIME
            self.answer(request, CONTINUE, block1=(block1.block_number, True, block1.size_exponent))
            return False
        del self.uploads[key]
        request.payload = bytes(upload.body)
        return True

    def _await(self, request: txcoap.Message) -> List[Any]:
        """Wait for the answer to CON ``request``: its empty ACK is due ``empty_ack_delay``
        from now, or ``GET_ACK_DELAY`` for a GET (see there)."""
        get = request.code == txcoap.GET
        delay = GET_ACK_DELAY if get else self.empty_ack_delay
        deadline = self.clock.seconds() + delay
        waiting = [deadline, request]
        (self._awaiting_get if get else self._awaiting).append(waiting)
        call = self._ack_call
        if call is None:
            self._ack_call = self.clock.callLater(delay, self._empty_acks)
        elif not get and call.getTime() > deadline:  # the timer waits for a GET's deadline
            call.reset(delay)
        return waiting

    def _empty_acks(self) -> None:
        """Send the empty ACK of every request past its deadline and still unanswered."""
        self._ack_call = None
        now = self.clock.seconds()
        wake = None
        for awaiting in (self._awaiting, self._awaiting_get):
            # past its deadline, or answered already (no need to wake for it later)
            while awaiting and (awaiting[0][0] <= now or awaiting[0][1] is None):
                request = awaiting.popleft()[1]
                if request is not None:
                    self._empty_ack(request)
            if awaiting and (wake is None or awaiting[0][0] < wake):
                wake = awaiting[0][0]
        if wake is not None:
            self._ack_call = self.clock.callLater(max(0.0, wake - now), self._empty_acks)

    def _empty_ack(self, request: txcoap.Message) -> None:
        ack = txcoap.Message(mtype=txcoap.ACK, mid=request.mid, code=txcoap.EMPTY)
        ack.remote = request.remote
        request.response_type = txcoap.ACK  # the answer follows as a separate CON
        self.sendMessage(ack)

    def _failed(self, failure: Any, request: txcoap.Message,
                waiting: Optional[List[Any]]) -> None:
        log.failure("Request handling failed for {peer}", failure=failure,
                    peer=_peer(request.remote))
        self._respond(make_response(codes.INTERNAL_SERVER_ERROR, b"internal error",
                                    codes.TEXT_PLAIN), request, waiting)

    def _respond(self, response: txcoap.Message, request: txcoap.Message,
                 waiting: Optional[List[Any]]) -> None:
        if waiting is not None:
            waiting[1] = None  # answered: no empty ACK
        asked = request.opt.block2
        szx = min(asked.size_exponent, BLOCK_SIZE_EXP) if asked is not None else BLOCK_SIZE_EXP
        number = asked.block_number if asked is not None else 0
        if number > 0:
            self.verify(request.remote)  # it got block 0, so it receives what we send
        body = response.payload
        reader = getattr(response, "body_reader", None)  # a large body read block by block
        size = response.body_size if reader is not None else len(body)
        if not getattr(response, "authenticated", False) and not self.is_verified(request.remote):
            # RFC 7252 §11.3: to a source that may be spoofed, an unauthenticated request is
            # answered with at most AMPLIFICATION times its size; the rest goes block by block.
            room = AMPLIFICATION * getattr(request, "size", 0) - 32 - len(request.token)
            while szx > 0 and size > room and (1 << (szx + 4)) > room:
                szx -= 1
        block = 1 << (szx + 4)
        if response.code >> 5 != 2:
            pass  # an error answers any block as it is (4.29 with Max-Age, 4.01, ...)
        elif size > block or number > 0:
            start = number * block
            if start >= size and number > 0:
                response = make_response(codes.BAD_OPTION, b"block beyond the end",
                                         codes.TEXT_PLAIN)
            elif reader is not None:  # a package: fixed for its title and version
                response.payload = reader(start, block)
                mark_block(response, number, szx, size)
            else:
                response.payload = body[start:start + block]
                mark_block(response, number, szx, size, etag(body))
        elif reader is not None:
            response.payload = reader(0, size)
        self._send_response(response, request, echo_block1=True)

    def _send_response(self, response: txcoap.Message, request: txcoap.Message,
                       echo_block1: bool) -> None:
        response.token = request.token
        response.remote = request.remote
        if echo_block1 and request.opt.block1 is not None and response.opt.block1 is None:
            block1 = request.opt.block1
            response.opt.block1 = (block1.block_number, False, block1.size_exponent)
        if request.mtype == txcoap.NON:
            response.mtype = txcoap.NON
        elif request.response_type == txcoap.ACK:
            response.mtype = txcoap.CON  # separate response after the empty ACK
        else:
            response.mtype = txcoap.ACK
            response.mid = request.mid
        self.sendMessage(response)


def mark_block(message: txcoap.Message, number: int, szx: int, size: int,
               tag: Optional[bytes] = None) -> None:
    """The options of block ``number`` (of 2**(szx+4) bytes) of a body of ``size`` bytes:
    Block2, Size2 with the first block, and ETag ``tag`` (RFC 7959 §2.2, §2.4)."""
    message.opt.block2 = (number, (number + 1) << (szx + 4) < size, szx)
    if tag is not None:
        message.opt.etag = tag
    if number == 0:
        message.opt.addOption(txcoap.UintOption(txcoap.SIZE2, size))


def etag(body: bytes) -> bytes:
    """An entity tag of ``body``: blocks of one representation carry the same one."""
    return struct.pack("!I", zlib.crc32(body))


def _uint_option(message: txcoap.Message, number: int) -> Optional[int]:
    options = message.opt.getOption(number)
    return options[0].value if options else None


def _peer(remote: Any) -> str:
    address, port = remote
    return "[%s]:%d" % (address, port) if ":" in str(address) else "%s:%d" % (address, port)


def _as_message(result: Any) -> txcoap.Message:
    if not isinstance(result, txcoap.Message):
        raise TypeError("request handler returned %r, not a Message" % (type(result),))
    if isinstance(result.payload, str):
        result.payload = result.payload.encode("utf-8")
    return result


_installed = False


def install() -> None:
    """Apply the module-level workarounds (W1 logging, W11 Block option). Idempotent."""
    global _installed
    if _installed:
        return
    quiet = QuietLog()
    txcoap.log = quiet
    txresource.log = quiet
    txcoap.BlockOption = FixedBlockOption
    txcoap.option_formats[txcoap.BLOCK1] = FixedBlockOption
    txcoap.option_formats[txcoap.BLOCK2] = FixedBlockOption
    _installed = True


def make_response(code: int, payload: bytes = b"", content_format: Optional[int] = None,
                  max_age: Optional[int] = None, size1: Optional[int] = None,
                  observe: Optional[int] = None, block1: Optional[Tuple[int, bool, int]] = None
                  ) -> txcoap.Message:
    install()
    message = txcoap.Message(code=code, payload=payload)
    if observe is not None:
        message.opt.observe = observe
    if content_format is not None:
        message.opt.content_format = content_format
    if max_age is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.MAX_AGE, max_age))
    if size1 is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.SIZE1, size1))
    if block1 is not None:
        message.opt.block1 = block1
    return message


def listen(reactor: IReactorUDP, protocol: BridgeCoap, port: int, interface: str) -> Any:
    """W9: listen with a receive buffer that holds any UDP datagram."""
    return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=RECEIVE_BUFFER)


def create_protocol(handler: Handler, clock: IReactorTime, empty_ack_delay: float,
                    exchange_lifetime: float, max_body: int = 65536,
                    rng: Optional[random.Random] = None, ack_timeout: float = txcoap.ACK_TIMEOUT,
                    max_retransmit: int = txcoap.MAX_RETRANSMIT) -> BridgeCoap:
    install()
    return BridgeCoap(handler, clock, empty_ack_delay, exchange_lifetime, max_body, rng,
                      ack_timeout, max_retransmit)
