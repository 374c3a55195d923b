"""The UDP transport of the CoAP endpoint: a Twisted ``DatagramProtocol`` around
``bridge.coap.endpoint.Endpoint``, with one timer for everything the endpoint waits for.

The message layer itself (deduplication, CON/ACK, empty ACKs, blocks,
amplification) is the sans-IO endpoint; this module only moves datagrams,
time and request handlers' answers between it and Twisted. Defect numbers
refer to ../shared/spec/txthings-notes.md, each with a regression test in
tests/edge/test_coap_engine.py.

* W1  ``QuietLog``: txThings formats ~9 legacy log lines per datagram; drop
  them, keep its error reports.
* W6  a failing handler always answers 5.00 (and the failure is logged once).
* W9  ``listen()`` uses a 65535-byte receive buffer, so big datagrams are not
  truncated.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional, Tuple, Union

import txthings.coap as txcoap
import txthings.resource as txresource
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

from ..coap import codec
from ..coap.codec import etag, make_response  # noqa: F401 (the edge's answers are built here)
from ..coap.endpoint import Answer, Endpoint, EndpointSettings, Exchange
from ..core import codes
from ..logs import logger
from . import udp

log = logger("coap")

RECEIVE_BUFFER = 65535  # W9

Handler = Callable[[txcoap.Message], Union[defer.Deferred, txcoap.Message, Answer]]


class QuietLog:
    """W1: stands in for ``twisted.python.log`` inside txThings."""

    def msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def err(self, failure: Any = None, why: Optional[str] = None, **kwargs: Any) -> None:
        log.failure(why or "txThings internal error", failure=failure)


class BridgeCoap(DatagramProtocol):
    """Feeds a UDP port's datagrams to an ``Endpoint`` and ``handler``'s answers back."""

    def __init__(self, handler: Handler, clock: IReactorTime, settings: EndpointSettings,
                 rng: Optional[random.Random] = None):
        self.handler = handler
        self.clock = clock
        self.endpoint = Endpoint(settings, rng or random.Random(), log, clock.seconds())
        # hears (ref, "ack" | "reset" | "timeout") for notifications sent with a ref
        self.on_result: Callable[[int, str], None] = lambda ref, outcome: None
        # hears the peers that ended (DTLS sessions), so their observations end too
        self.on_peer_gone: Callable[[Any], None] = lambda peer: None
        self._call: Any = None  # the one timer, due at the endpoint's next_timer()
        self._armed = 0.0
        self._receiving = False  # in datagramReceived, which sends what is due at its end

    @property
    def malformed(self) -> int:
        return self.endpoint.malformed

    @property
    def retransmissions(self) -> int:
        return self.endpoint.retransmissions

    def withdraw(self, ref: int) -> None:
        """No more retransmissions of CON notification ``ref`` (its device sleeps)."""
        self.endpoint.withdraw(ref)

    def startProtocol(self) -> None:
        self._arm()

    def stopProtocol(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.endpoint.close()

    def datagramReceived(self, data: bytes, remote: Tuple[str, int]) -> None:
        # the peer stays Twisted's (host, port) tuple: hashing and printing an ipaddress
        # object per datagram costs more than the rest of the decoding
        self.received(data, (remote[0], remote[1]))

    def received(self, data: bytes, peer: Any) -> None:
        """A CoAP datagram from ``peer``: a (host, port) of this port, or a DTLS session
        (an object with ``key``, ``address`` and ``send(datagram)``) that decrypted it."""
        exchange = self.endpoint.receive_datagram(data, peer, self.clock.seconds())
        if exchange is not None:
            self._receiving = True
            try:
                self._dispatch(exchange)
            finally:
                self._receiving = False
        self._flush()

    def trust(self, peer: Any) -> None:
        """``peer`` (a DTLS session) is known to receive what we send: its handshake
        proved its address (RFC 7252 §11.3), so no amplification limit applies."""
        self.endpoint.verify(peer)

    def forget(self, peer: Any) -> None:
        """``peer`` (a DTLS session) ended: the endpoint stops holding on to it, and the
        core ends its observe relations (a NON observer would otherwise stay for good)."""
        self.endpoint.verified.pop(peer, None)
        self.on_peer_gone(peer)

    def notify(self, ref: int, remote: Any, token: bytes, confirmable: bool, code: int,
               payload: bytes, observe: int, block_size: int = codes.BLOCK_SIZE,
               content_format: int = codes.APPLICATION_JSON) -> None:
        self.endpoint.notify(ref, remote, token, confirmable, code, payload, observe,
                             self.clock.seconds(), block_size, content_format)
        self._flush()

    # -- requests ------------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        try:
            result = self.handler(exchange.message)
        except Exception:
            log.failure("Request handler raised for {peer}", peer=codec.describe(exchange.peer))
            self.endpoint.answer(exchange, self.clock.seconds(), codes.INTERNAL_SERVER_ERROR,
                                 b"internal error")
            return
        if isinstance(result, defer.Deferred):
            result.addCallback(self._respond, exchange)
            result.addErrback(self._failed, exchange)
        else:
            self._respond(result, exchange)

    def _respond(self, result: Any, exchange: Exchange) -> None:
        if isinstance(result, txcoap.Message):
            result = Answer(result)
        elif not isinstance(result, Answer):
            raise TypeError("request handler returned %r, not a Message" % (type(result),))
        message = result.message
        if message is not None and isinstance(message.payload, str):
            message.payload = message.payload.encode("utf-8")
        self.endpoint.respond(exchange, message, self.clock.seconds(), result.authenticated,
                              result.large)
        if not self._receiving:  # an answer later than its request
            self._flush()

    def _failed(self, failure: Any, exchange: Exchange) -> None:
        log.failure("Request handling failed for {peer}", failure=failure,
                    peer=codec.describe(exchange.peer))
        self.endpoint.respond(exchange, make_response(
            codes.INTERNAL_SERVER_ERROR, b"internal error", codes.TEXT_PLAIN),
            self.clock.seconds())
        self._flush()

    # -- out and time --------------------------------------------------------------------

    def _flush(self) -> None:
        endpoint = self.endpoint
        if endpoint.outgoing:
            write = self.transport.write
            for data, peer in endpoint.datagrams_to_send():
                if type(peer) is tuple:
                    write(data, (str(peer[0]), peer[1]))
                else:
                    peer.send(data)  # a DTLS session encrypts it
        if endpoint.outcomes:
            outcomes, endpoint.outcomes = endpoint.outcomes, []
            for ref, outcome in outcomes:
                self.on_result(ref, outcome)
        self._arm()

    def _arm(self) -> None:
        due = self.endpoint.next_timer()
        if self._call is not None:
            if due >= self._armed:
                return
            self._call.cancel()
        self._armed = due
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self.endpoint.handle_timer(self.clock.seconds())
        self._flush()


_installed = False


def install() -> None:
    """Apply the module-level workarounds (W1 logging, W11 Block option). Idempotent."""
    global _installed
    if _installed:
        return
    quiet = QuietLog()
    txcoap.log = quiet
    txresource.log = quiet
    codec.install()
    _installed = True


def listen(reactor: IReactorUDP, protocol: BridgeCoap, port: int, interface: str,
           shared: bool = False) -> Any:
    """W9: listen with a receive buffer that holds any UDP datagram; ``shared``: beside the
    other worker processes (``SO_REUSEPORT``, see ``bridge.edge.udp``)."""
    return udp.listen_udp(reactor, protocol, port, interface, RECEIVE_BUFFER, shared)


def create_protocol(handler: Handler, clock: IReactorTime, empty_ack_delay: float,
                    exchange_lifetime: float, max_body: int = 65536,
                    rng: Optional[random.Random] = None, ack_timeout: float = txcoap.ACK_TIMEOUT,
                    max_retransmit: int = txcoap.MAX_RETRANSMIT) -> BridgeCoap:
    install()
    settings = EndpointSettings(empty_ack_delay, exchange_lifetime, max_body, ack_timeout,
                                max_retransmit)
    return BridgeCoap(handler, clock, settings, rng)
