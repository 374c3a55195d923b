"""The driver of a CoAP datagram transport: one sans-IO message layer
(``bridge.coap.datagram.MessageLayer``), its timer, and the request handler's answers.

Shared by plain UDP (``edge/coap.py``: the datagrams of a UDP port, peers (host, port))
and CoAPs (``edge/dtls.py``: each DTLS record's plaintext, peers ``DtlsPeer``); each
says where a datagram for a peer goes (``transmit``) and hands in what it received
(``received``). Each input is followed by one drain of the layer's events
(``Transmit`` to ``transmit``, ``Incoming`` to the handler, ``Notified`` to
``on_result``) and the timer armed to the layer's ``next_timer()`` (``edge/timer.py``).

* W6  a failing handler always answers 5.00 (and the failure is logged once):
  ``edge.handling``, shared with the reliable transports' driver (``edge/stream.py``)
  (../shared/spec/txthings-notes.md; regression test in tests/edge/test_coap_engine.py).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Hashable, Optional

from twisted.internet.interfaces import IReactorTime

from ..coap.datagram import DatagramSettings, MessageLayer, Observation
from ..coap.exchange import Answer, Incoming, Notified, Transmit
from ..coap.message import Message
from ..core import codes
from ..logs import logger
from .handling import Handler, Handling, not_an_answer
from .timer import OneTimer

log = logger("coap")

def _nowhere(data: bytes, peer: Hashable) -> None:
    raise TypeError("no transport to send to %r through" % (peer,))


def _unheard(*_: Any) -> None:
    """No one listens for it."""


class DatagramDriver(Handling):
    """A ``MessageLayer`` driven on the reactor (see the module)."""

    def __init__(self, handler: Handler, clock: IReactorTime, settings: DatagramSettings,
                 rng: Optional[random.Random] = None,
                 transmit: Callable[[bytes, Hashable], None] = _nowhere,
                 callback_handler: bool = False,
                 on_result: Optional[Callable[[int, str], None]] = None,
                 on_peer_gone: Optional[Callable[[Any], None]] = None):
        """``handler(incoming)`` answers with a ``Message`` or ``Answer``, or a Deferred
        of one; a ``callback_handler`` is called as ``handler(incoming, respond)`` and
        answers by calling ``respond(answer, incoming)`` once, now or later (no Deferred
        per request), or returns its answer as a plain handler does."""
        self.handler = handler
        self.callback_handler = callback_handler
        self.clock = clock
        self.layer = MessageLayer(settings, rng or random.Random(), log, clock.seconds())
        self.transmit = transmit  # a datagram for a peer: to the socket, or encrypted
        # hears (ref, "ack" | "delivered" | "reset" | "timeout") for each notification
        self.on_result: Callable[[int, str], None] = on_result or _unheard
        # hears the peers that ended (DTLS sessions), so their observations end too
        self.on_peer_gone: Callable[[Any], None] = on_peer_gone or _unheard
        self.timer = OneTimer(clock, self._fire)
        self._draining = False

    @property
    def malformed(self) -> int:
        return self.layer.malformed

    @property
    def retransmissions(self) -> int:
        return self.layer.retransmissions

    def start(self) -> None:
        self.timer.arm(self.layer.next_timer())

    def stop(self) -> None:
        self.timer.cancel()
        self.layer.close()

    def received(self, data: bytes, peer: Hashable) -> None:
        """A CoAP datagram from ``peer``."""
        self.layer.receive_datagram(data, peer, self.clock.seconds())
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

    def withdraw(self, ref: int, peer: Hashable) -> None:
        """No more retransmissions of CON notification ``ref`` to ``peer`` (its device
        sleeps): if it was still waiting for its ACK, its fate is "withdrawn"."""
        self.layer.withdraw(ref, peer)
        self._drain()

    def trust(self, peer: Hashable) -> None:
        """``peer`` is known to receive what we send (a DTLS handshake proved its address,
        RFC 7252 §11.3): no amplification limit applies."""
        self.layer.verify(peer)

    def forget(self, peer: Hashable) -> None:
        """``peer`` ended (a DTLS session): the layer stops holding on to it, and the core
        ends its observe relations (a NON observer would otherwise stay for good)."""
        self.layer.forget(peer)
        self.on_peer_gone(peer)

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
                events = layer.events()  # one list per drain: cheaper than one call each
                if not events:
                    break
                left = iter(events)
                try:
                    for event in left:
                        kind = type(event)
                        if kind is Transmit:
                            self.transmit(event.data, event.peer)  # type: ignore[union-attr]
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

    def _respond(self, result: Any, incoming: Incoming) -> None:
        """The handler's answer (``edge.handling``) to the message layer."""
        if type(result) is not Answer:
            if not isinstance(result, Message):
                raise not_an_answer(result)
            result = Answer(result)
        self.layer.respond(incoming, result, self.clock.seconds())
        self._drain()

    def _fire(self) -> None:
        self.layer.handle_timer(self.clock.seconds())
        self._drain()
