"""The UDP transport of CoAP: a Twisted ``DatagramProtocol`` driving the sans-IO message
layer (``bridge.coap.datagram.MessageLayer``) with one timer.

Everything CoAP (deduplication, CON/ACK, empty ACKs, retransmission, blocks,
amplification, the CON/NON choice of notifications) is the message layer's and the
exchange layer's; this module moves datagrams, time and the request handler's answers
between them and Twisted: each input is followed by one drain of the layer's events
(``Transmit`` to the port, ``Incoming`` to the handler, ``Notified`` to ``on_result``)
and the timer armed to the layer's ``next_timer()`` (``edge/timer.py``). Defect numbers
refer to ../shared/spec/txthings-notes.md, each with a regression test in
tests/coap/ (the layers) or tests/edge/test_coap_engine.py (this driver).

* W6  a failing handler always answers 5.00 (and the failure is logged once).
* W9  ``listen()`` uses a 65535-byte receive buffer, so big datagrams are not truncated.

The DTLS seam: today's DTLS transport (``edge/dtls.py``) hands its sessions'
plaintext here (``received(data, session)``), says a handshake proved the peer's
address (``trust``) and that a session ended (``forget``); what goes to a peer that is
not an address pair goes to its ``send`` (``_transmit``). Those three methods and that
one branch are the whole adapter, to be replaced by a driver over the sans-IO DTLS
server that feeds a ``MessageLayer`` of its own.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Hashable, Optional, Tuple, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from ..coap.datagram import (ACK_TIMEOUT, MAX_RETRANSMIT, DatagramSettings, MessageLayer,
                             Observation)
from ..coap.exchange import Answer, Incoming, Notified, Transmit
from ..coap.message import Message
from ..coap.peers import describe
from ..core import codes
from ..logs import logger
from . import udp
from .timer import OneTimer

log = logger("coap")

RECEIVE_BUFFER = 65535  # W9

Handler = Callable[..., Union[None, defer.Deferred, Message, Answer]]


class BridgeCoap(DatagramProtocol):
    """Feeds a UDP port's datagrams to a ``MessageLayer`` and ``handler``'s answers back."""

    def __init__(self, handler: Handler, clock: IReactorTime, settings: DatagramSettings,
                 rng: Optional[random.Random] = None, callback_handler: bool = False):
        """``handler(incoming)`` answers with a ``Message`` or ``Answer``, or a Deferred
        of one; a ``callback_handler`` is called as ``handler(incoming, respond)`` and
        answers by calling ``respond(answer, incoming)`` once, now or later (no Deferred
        per request), or returns its answer as a plain handler does."""
        self.handler = handler
        self.callback_handler = callback_handler
        self.clock = clock
        self.layer = MessageLayer(settings, rng or random.Random(), log, clock.seconds())
        # hears (ref, "ack" | "delivered" | "reset" | "timeout") for each notification
        self.on_result: Callable[[int, str], None] = lambda ref, outcome: None
        # hears the peers that ended (DTLS sessions), so their observations end too
        self.on_peer_gone: Callable[[Any], None] = lambda peer: None
        self.timer = OneTimer(clock, self._fire)
        self._draining = False

    @property
    def malformed(self) -> int:
        return self.layer.malformed

    def startProtocol(self) -> None:
        self.timer.arm(self.layer.next_timer())

    def stopProtocol(self) -> None:
        self.timer.cancel()
        self.layer.close()

    def datagramReceived(self, data: bytes, remote: Tuple[str, int]) -> None:
        # the peer stays Twisted's (host, port) tuple: hashing and printing an ipaddress
        # object per datagram costs more than the rest of the decoding
        self.layer.receive_datagram(data, (remote[0], remote[1]), self.clock.seconds())
        self._drain()

    def notify(self, ref: int, peer: Hashable, token: bytes, code: int, payload: bytes,
               observe: int, observation: Optional[Observation],
               block_size: int = codes.BLOCK_SIZE,
               content_format: int = codes.APPLICATION_JSON) -> None:
        """Notification ``ref``; its fate goes to ``on_result``."""
        self.layer.notify(ref, peer, token, code, payload, observe, observation,
                          self.clock.seconds(), block_size, content_format)
        self._drain()

    def end_observation(self, peer: Hashable, token: bytes, code: int, diagnostic: bytes,
                        max_age: Optional[int] = None) -> None:
        """Tell ``peer`` that its relation of ``token`` ended (a notification with ``code``
        and no Observe option, CON)."""
        self.layer.end_observation(peer, token, code, diagnostic, self.clock.seconds(),
                                   max_age)
        self._drain()

    # -- the DTLS seam (see the module docstring) ----------------------------------------

    def received(self, data: bytes, peer: Any) -> None:
        """A CoAP datagram from ``peer``: a DTLS session (an object with ``key``,
        ``address`` and ``send(datagram)``) that decrypted it."""
        self.layer.receive_datagram(data, peer, self.clock.seconds())
        self._drain()

    def trust(self, peer: Any) -> None:
        """``peer`` (a DTLS session) is known to receive what we send: its handshake
        proved its address (RFC 7252 §11.3), so no amplification limit applies."""
        self.layer.verify(peer)

    def forget(self, peer: Any) -> None:
        """``peer`` (a DTLS session) ended: the layer stops holding on to it, and the
        core ends its observe relations (a NON observer would otherwise stay for good)."""
        self.layer.forget(peer)
        self.on_peer_gone(peer)

    def _transmit(self, event: Transmit) -> None:
        peer = event.peer
        if type(peer) is tuple:
            self.transport.write(event.data, (str(peer[0]), peer[1]))
        else:
            peer.send(event.data)  # a DTLS session encrypts it

    # -- events and requests -------------------------------------------------------------

    def _drain(self) -> None:
        """Carry out the layer's events, in order, then arm the timer. An answer given
        while draining (a handler that answers at once) is drained by the same loop."""
        if self._draining:
            return
        self._draining = True
        layer = self.layer
        try:
            while True:
                events = layer.events()
                if not events:
                    break
                left = iter(events)
                try:
                    for event in left:
                        kind = type(event)
                        if kind is Transmit:
                            self._transmit(event)  # type: ignore[arg-type]
                        elif kind is Incoming:
                            self._dispatch(event)  # type: ignore[arg-type]
                        else:
                            notified: Notified = event  # type: ignore[assignment]
                            self.on_result(notified.ref, notified.outcome)
                except BaseException:
                    layer.put_back(list(left))  # the next drain carries them out
                    raise
        finally:
            self._draining = False
            self.timer.arm(layer.next_timer())  # also after a failure: the rest goes later

    def _dispatch(self, incoming: Incoming) -> None:
        try:
            if self.callback_handler:
                result = self.handler(incoming, self._answered)
                if result is None:  # it calls _answered
                    return
            else:
                result = self.handler(incoming)
        except Exception:
            log.failure("Request handler raised for {peer}", peer=describe(incoming.peer))
            self.layer.refuse(incoming, codes.INTERNAL_SERVER_ERROR, b"internal error",
                              self.clock.seconds())
            return
        if isinstance(result, defer.Deferred):
            result.addCallback(self._respond, incoming)
            result.addErrback(self._failed, incoming)
        else:
            self._respond(result, incoming)

    def _answered(self, result: Any, incoming: Incoming) -> None:
        """A callback handler's answer (W6: one that cannot be sent is a 5.00)."""
        try:
            self._respond(result, incoming)
        except Exception:
            self._failed(Failure(), incoming)

    def _respond(self, result: Any, incoming: Incoming) -> None:
        if type(result) is not Answer:
            if not isinstance(result, Message):
                raise TypeError("request handler returned %r, not a Message" % (type(result),))
            result = Answer(result)
        self.layer.respond(incoming, result, self.clock.seconds())
        self._drain()

    def _failed(self, failure: Any, incoming: Incoming) -> None:
        log.failure("Request handling failed for {peer}", failure=failure,
                    peer=describe(incoming.peer))
        self.layer.refuse(incoming, codes.INTERNAL_SERVER_ERROR, b"internal error",
                          self.clock.seconds())
        self._drain()

    def _fire(self) -> None:
        self.layer.handle_timer(self.clock.seconds())
        self._drain()


def listen(reactor: IReactorUDP, protocol: BridgeCoap, port: int, interface: str,
           shared: bool = False, inherited: Optional[int] = None) -> Any:
    """W9: listen with a receive buffer that holds any UDP datagram; ``shared``: beside the
    other worker processes (``SO_REUSEPORT``, see ``bridge.edge.udp``); ``inherited``: on
    the socket the supervisor handed over."""
    return udp.listen_udp(reactor, protocol, port, interface, RECEIVE_BUFFER, shared,
                          inherited)


def create_protocol(handler: Handler, clock: IReactorTime, empty_ack_delay: float,
                    exchange_lifetime: float, max_body: int = 65536,
                    rng: Optional[random.Random] = None, ack_timeout: float = ACK_TIMEOUT,
                    max_retransmit: int = MAX_RETRANSMIT,
                    con_interval: float = 86400.0,
                    callback_handler: bool = False) -> BridgeCoap:
    settings = DatagramSettings(empty_ack_delay, exchange_lifetime, max_body, ack_timeout,
                                max_retransmit, con_interval)
    return BridgeCoap(handler, clock, settings, rng, callback_handler)
