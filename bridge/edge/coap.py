"""The txThings CoAP engine, hardened. Every workaround for a txThings 0.3.0 defect lives here.

Defect numbers refer to ../shared/spec/txthings-notes.md; each has a regression
test in tests/edge/test_coap_engine.py.

* W1  ``QuietLog``: txThings formats ~9 legacy log lines per datagram; drop
  them, keep its error reports.
* W2  ``BridgeCoap.datagramReceived``: malformed datagrams (short, bad
  version, TKL 9-15, broken options, payload marker without payload,
  reserved classes, non-empty "empty" messages) are answered with RST when
  confirmable and otherwise dropped, without a traceback.
* W3  unknown critical options get 4.02; Proxy-Uri/Proxy-Scheme get 5.05.
* W5  ``BridgeResponder.sendEmptyAck``: the empty ACK carries no token and is
  only sent for CON requests.
* W6  ``BridgeResponder.dispatchRequest``: a failing application always
  answers 5.00 (and the failure is logged once).
* W7  1024-byte blocks instead of 64.
* W9  ``listen()`` uses a 65535-byte receive buffer, so big datagrams are
  not truncated.
* W10 ``deduplicateMessage``: (mid, peer) -> encoded response only, expired
  in time buckets by one LoopingCall instead of one DelayedCall per datagram.

The engine still uses txThings for message coding, Block1/Block2 and
retransmission of separate responses.
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict, deque
from ipaddress import ip_address
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import txthings.coap as txcoap
import txthings.error as txerror
import txthings.resource as txresource
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.task import LoopingCall
from ..logs import logger

from ..core import codes

log = logger("coap")

# Options this server understands (RFC 7252 §5.4.1: odd numbers are critical).
UNDERSTOOD_CRITICAL = frozenset({3, 7, 11, 15, 17, 23, 27})
PROXY_OPTIONS = frozenset({35, 39})
BLOCK_SIZE_EXP = 6  # W7: 1024-byte blocks
RECEIVE_BUFFER = 65535  # W9


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
    return numbers


class Deduplicator:
    """W10: remembers (mid, peer) of recent CON/NON requests and the encoded first response.

    Entries live between ``lifetime`` and ``lifetime + bucket`` seconds; one
    ``sweep()`` per bucket interval drops whole buckets.
    """

    def __init__(self, lifetime: float, bucket: float = 5.0):
        self.lifetime = lifetime
        self.bucket = bucket
        self.entries: Dict[Tuple[int, Any], Optional[bytes]] = {}
        self._buckets: Deque[Tuple[float, List[Tuple[int, Any]]]] = deque()

    def seen(self, key: Tuple[int, Any], now: float) -> bool:
        """True for a duplicate; otherwise remember ``key`` and return False."""
        if key in self.entries:
            return True
        self.entries[key] = None
        if not self._buckets or self._buckets[-1][0] + self.bucket <= now:
            self._buckets.append((now, []))
        self._buckets[-1][1].append(key)
        return False

    def response(self, key: Tuple[int, Any]) -> Optional[bytes]:
        return self.entries.get(key)

    def remember_response(self, key: Tuple[int, Any], data: bytes) -> None:
        if key in self.entries and self.entries[key] is None:
            self.entries[key] = data

    def sweep(self, now: float) -> None:
        horizon = now - self.lifetime
        while self._buckets and self._buckets[0][0] + self.bucket <= horizon:
            for key in self._buckets.popleft()[1]:
                self.entries.pop(key, None)


class BridgeCoap(txcoap.Coap):
    """txThings' protocol with W2, W3 and W10 applied and the clock injected."""

    def __init__(self, endpoint: Any, clock: IReactorTime, empty_ack_delay: float = 0.5,
                 exchange_lifetime: float = txcoap.EXCHANGE_LIFETIME):
        super().__init__(endpoint)
        self.clock = clock
        self.empty_ack_delay = empty_ack_delay
        self.dedup = Deduplicator(exchange_lifetime)
        self.malformed = 0
        self.notifier: Optional["Notifier"] = None
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def startProtocol(self) -> None:
        self._sweeper.start(self.dedup.bucket, now=False).addErrback(
            lambda f: log.failure("Deduplication sweeper stopped", failure=f))

    def stopProtocol(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        if self.notifier is not None:
            self.notifier.stop()

    def _sweep(self) -> None:
        self.dedup.sweep(self.clock.seconds())

    def datagramReceived(self, data: bytes, remote: Tuple[str, int]) -> None:
        if len(data) < 4 or data[0] >> 6 != 1:
            self._drop(remote, "short datagram or wrong version")
            return
        try:
            numbers = inspect(data)
            message = txcoap.Message.decode(data, (ip_address(remote[0]), remote[1]), self)
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
            rejected = self._reject_options(numbers)
            if rejected is not None:
                self._answer(message, *rejected)
                return
            self.processRequest(message)
        elif code >= 64:
            self.processResponse(message)
        else:
            self.processEmpty(message)

    def _reject_options(self, numbers: List[int]) -> Optional[Tuple[int, bytes]]:
        for number in numbers:
            if number in PROXY_OPTIONS:
                return codes.PROXYING_NOT_SUPPORTED, b"proxying is not supported"
            if number & 1 and number not in UNDERSTOOD_CRITICAL:
                return codes.BAD_OPTION, b"unrecognized critical option %d" % number
        return None

    def _answer(self, request: txcoap.Message, code: int, diagnostic: bytes) -> None:
        mtype = txcoap.ACK if request.mtype == txcoap.CON else txcoap.NON
        mid = request.mid if mtype == txcoap.ACK else None
        response = txcoap.Message(mtype=mtype, mid=mid, code=code, payload=diagnostic,
                                  token=request.token)
        response.remote = request.remote
        log.info("Rejected request from {peer}: {code} {reason}", peer=_peer(request.remote),
                 code=codes.dotted(code), reason=diagnostic.decode())
        self.sendMessage(response)

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
        key = (message.mid, message.remote)
        if not self.dedup.seen(key, self.clock.seconds()):
            return False
        cached = self.dedup.response(key)
        if message.mtype == txcoap.CON and cached is not None:
            address, port = message.remote
            self.transport.write(cached, (str(address), port))
        log.debug("Duplicate {mtype} mid {mid} from {peer}", mtype=txcoap.types[message.mtype],
                  mid=message.mid, peer=_peer(message.remote))
        return True

    def processEmpty(self, message: txcoap.Message) -> None:
        if self.notifier is not None and message.mtype in (txcoap.ACK, txcoap.RST) \
                and self.notifier.answered(message.mid, message.remote, message.mtype):
            return
        super().processEmpty(message)

    def sendMessage(self, message: txcoap.Message) -> None:
        if message.mid is None:
            message.mid = self.nextMessageID()
        if isinstance(message.payload, str):
            message.payload = message.payload.encode("utf-8")
        data = message.encode()
        address, port = message.remote
        self.transport.write(data, (str(address), port))
        if message.mtype in (txcoap.ACK, txcoap.RST):
            self.dedup.remember_response((message.mid, message.remote), data)
        elif message.mtype == txcoap.CON:
            self.addExchange(message)


def _peer(remote: Any) -> str:
    address, port = remote
    return "[%s]:%d" % (address, port) if ":" in str(address) else "%s:%d" % (address, port)


class BridgeResponder(txcoap.Responder):
    """W5 and W6 on txThings' per-request responder."""

    def dispatchRequest(self, request: txcoap.Message) -> Optional[defer.Deferred]:
        request.prepath = []
        request.postpath = request.opt.uri_path
        try:
            resource = self.protocol.endpoint.getResourceFor(request)
            result = resource.render(request)
        except txerror.NoResource:
            self.respondWithError(request, txcoap.NOT_FOUND, b"resource not found")
            return None
        except (txerror.UnallowedMethod, txerror.UnsupportedMethod):
            self.respondWithError(request, txcoap.METHOD_NOT_ALLOWED, b"method not allowed")
            return None
        except Exception:
            log.failure("Request handler raised for {peer}", peer=_peer(request.remote))
            self.respondWithError(request, txcoap.INTERNAL_SERVER_ERROR, b"internal error")
            return None
        delayed_ack = None
        if request.mtype == txcoap.CON:
            delayed_ack = self.protocol.clock.callLater(self.protocol.empty_ack_delay,
                                                        self.sendEmptyAck, request)
        d = result if isinstance(result, defer.Deferred) else defer.succeed(result)
        d.addCallback(_as_message)
        d.addCallback(self.respond, request, delayed_ack)
        d.addErrback(self._failed, request, delayed_ack)
        return d

    def _failed(self, failure: Any, request: txcoap.Message, delayed_ack: Any) -> None:
        log.failure("Request handling failed for {peer}", failure=failure,
                    peer=_peer(request.remote))
        if delayed_ack is not None and delayed_ack.active():
            delayed_ack.cancel()
        self.respondWithError(request, txcoap.INTERNAL_SERVER_ERROR, b"internal error")

    def sendEmptyAck(self, request: txcoap.Message) -> None:
        if request.mtype != txcoap.CON:
            return
        ack = txcoap.Message(mtype=txcoap.ACK, mid=request.mid, code=txcoap.EMPTY)
        ack.remote = request.remote
        request.response_type = txcoap.ACK  # the answer follows as a separate CON
        self.protocol.sendMessage(ack)


def _as_message(result: Any) -> txcoap.Message:
    if not isinstance(result, txcoap.Message):
        raise TypeError("request handler returned %r, not a Message" % (type(result),))
    if isinstance(result.payload, str):
        result.payload = result.payload.encode("utf-8")
    return result


class Notifier:
    """Sends observe notifications and keeps CON ones reliable (RFC 7252 §4.2).

    Exchanges are keyed by (message ID, peer), so an ACK from anyone else
    cannot stop a retransmission (txThings keys by message ID only). The
    outcome of each CON notification ("ack", "reset", "timeout") and an RST to
    a recent NON notification ("reset") go to ``on_result(ref, outcome)``.
    """

    def __init__(self, protocol: BridgeCoap, clock: IReactorTime, rng: random.Random,
                 on_result: Callable[[int, str], None], ack_timeout: float = txcoap.ACK_TIMEOUT,
                 max_retransmit: int = txcoap.MAX_RETRANSMIT):
        self.protocol = protocol
        self.clock = clock
        self.rng = rng
        self.on_result = on_result
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.exchanges: Dict[Tuple[int, Any], List[Any]] = {}
        self.recent_non: "OrderedDict[Tuple[int, Any], int]" = OrderedDict()
        protocol.notifier = self

    def send(self, ref: int, remote: Any, token: bytes, confirmable: bool, code: int,
             payload: bytes, observe: int) -> None:
        mtype = txcoap.CON if confirmable else txcoap.NON
        message = txcoap.Message(mtype=mtype, mid=self.protocol.nextMessageID(), code=code,
                                 payload=payload, token=token)
        message.opt.observe = observe
        if payload:
            message.opt.content_format = codes.APPLICATION_JSON
        data = message.encode()
        address, port = remote
        target = (str(address), port)
        self.protocol.transport.write(data, target)
        key = (message.mid, remote)
        if confirmable:
            timeout = self.rng.uniform(self.ack_timeout, self.ack_timeout * txcoap.ACK_RANDOM_FACTOR)
            call = self.clock.callLater(timeout, self._retransmit, key)
            self.exchanges[key] = [ref, data, target, 0, timeout, call]
        else:
            self.recent_non[key] = ref
            if len(self.recent_non) > 4096:
                self.recent_non.popitem(last=False)

    def answered(self, mid: int, remote: Any, mtype: int) -> bool:
        key = (mid, remote)
        exchange = self.exchanges.pop(key, None)
        if exchange is not None:
            if exchange[5].active():
                exchange[5].cancel()
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
            log.info("Notification to {peer} unacknowledged after {count} retransmissions",
                     peer="%s:%d" % target, count=count)
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


_installed = False


def install() -> None:
    """Apply the module-level workarounds (W1, W5/W6 responder, W7). Idempotent."""
    global _installed
    if _installed:
        return
    quiet = QuietLog()
    txcoap.log = quiet
    txresource.log = quiet
    txcoap.Responder = BridgeResponder
    txcoap.DEFAULT_BLOCK_SIZE_EXP = BLOCK_SIZE_EXP
    _installed = True


class ApiResource(txresource.CoAPResource):
    """The whole resource tree: one leaf that hands every request to ``handler``.

    ``handler(request) -> Deferred[Message]``. Routing, including 4.04 and
    4.05, is the core's job, so every method code reaches it.
    """

    isLeaf = True

    def __init__(self, handler: Callable[[txcoap.Message], defer.Deferred]):
        super().__init__()
        self.handler = handler

    def render(self, request: txcoap.Message) -> defer.Deferred:
        return self.handler(request)


def make_response(code: int, payload: bytes = b"", content_format: Optional[int] = None,
                  max_age: Optional[int] = None, size1: Optional[int] = None,
                  observe: Optional[int] = None) -> txcoap.Message:
    message = txcoap.Message(code=code, payload=payload)
    if observe is not None:
        message.opt.observe = observe
    if content_format is not None:
        message.opt.content_format = content_format
    if max_age is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.MAX_AGE, max_age))
    if size1 is not None:
        message.opt.addOption(txcoap.UintOption(txcoap.SIZE1, size1))
    return message


def listen(reactor: IReactorUDP, protocol: BridgeCoap, port: int, interface: str) -> Any:
    """W9: listen with a receive buffer that holds any UDP datagram."""
    return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=RECEIVE_BUFFER)


def create_protocol(handler: Callable[[txcoap.Message], defer.Deferred], clock: IReactorTime,
                    empty_ack_delay: float, exchange_lifetime: float) -> BridgeCoap:
    install()
    endpoint = txresource.Endpoint(ApiResource(handler))
    return BridgeCoap(endpoint, clock, empty_ack_delay, exchange_lifetime)
