"""The UDP transport of CoAP: a Twisted ``DatagramProtocol`` that is a ``DatagramDriver``
(``edge/datagram.py``) of the sans-IO message layer, writing its datagrams to the port.

Everything CoAP (deduplication, CON/ACK, empty ACKs, retransmission, blocks,
amplification, the CON/NON choice of notifications) is the message layer's and the
exchange layer's; the driver moves datagrams, time and the request handler's answers
between them and Twisted, the same for CoAPs (``edge/dtls.py``, which drives a message
layer of its own over its DTLS sessions). Defect numbers refer to
../shared/spec/txthings-notes.md, each with a regression test in tests/coap/ (the
layers) or tests/edge/test_coap_engine.py (the driver).

* W6  a failing handler always answers 5.00 (``DatagramDriver``, by ``edge.handling``).
* W9  ``listen()`` uses a 65535-byte receive buffer, so big datagrams are not truncated.

A datagram the port refuses (``sendto`` fails) is dropped, counted and said once a minute
(``edge/sendto.py``), never raised into the drain.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Hashable, Optional, Tuple

from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

from ..coap.datagram import ACK_TIMEOUT, MAX_RETRANSMIT, DatagramSettings
from . import udp
from .datagram import DatagramDriver, Handler
from .sendto import SEND_ERRORS, SendFailures

RECEIVE_BUFFER = 65535  # W9


class BridgeCoap(DatagramProtocol, DatagramDriver):
    """Feeds a UDP port's datagrams to a ``MessageLayer`` and ``handler``'s answers back."""

    def __init__(self, handler: Handler, clock: IReactorTime, settings: DatagramSettings,
                 rng: Optional[random.Random] = None, callback_handler: bool = False,
                 on_result: Optional[Callable[[int, str], None]] = None,
                 on_peer_gone: Optional[Callable[[Any], None]] = None):
        DatagramDriver.__init__(self, handler, clock, settings, rng, self._write,
                                callback_handler, on_result, on_peer_gone)
        self.send_failures = SendFailures(clock, "udp")

    def startProtocol(self) -> None:
        self.start()

    def stopProtocol(self) -> None:
        self.stop()

    def datagramReceived(self, data: bytes, remote: Tuple[str, int]) -> None:
        # the peer stays Twisted's (host, port) tuple: hashing and printing an ipaddress
        # object per datagram costs more than the rest of the decoding (and the layer is
        # called here, not through ``received``: a call less per datagram)
        self.layer.receive_datagram(data, (remote[0], remote[1]), self.clock.seconds())
        self._drain()

    def _write(self, data: bytes, peer: Hashable) -> None:
        try:
            self.transport.write(data, (str(peer[0]), peer[1]))  # type: ignore[index]
        except SEND_ERRORS as exc:
            self.send_failures.failed(exc, peer)


def listen(reactor: IReactorUDP, protocol: BridgeCoap, port: int, interface: str,
           shared: bool = False, inherited: Optional[int] = None) -> Any:
    """W9: listen with a receive buffer that holds any UDP datagram; ``shared``: beside the
    other worker processes (``SO_REUSEPORT``, see ``bridge.edge.udp``); ``inherited``: on
    the socket the supervisor handed over."""
    return udp.listen_udp(reactor, protocol, port, interface, RECEIVE_BUFFER, shared,
                          inherited)


def datagram_settings(empty_ack_delay: float, exchange_lifetime: float,
                      max_body: int = 65536, ack_timeout: float = ACK_TIMEOUT,
                      max_retransmit: int = MAX_RETRANSMIT,
                      con_interval: float = 86400.0) -> DatagramSettings:
    return DatagramSettings(empty_ack_delay, exchange_lifetime, max_body, ack_timeout,
                            max_retransmit, con_interval)


def create_protocol(handler: Handler, clock: IReactorTime, empty_ack_delay: float,
                    exchange_lifetime: float, max_body: int = 65536,
                    rng: Optional[random.Random] = None, ack_timeout: float = ACK_TIMEOUT,
                    max_retransmit: int = MAX_RETRANSMIT,
                    con_interval: float = 86400.0,
                    callback_handler: bool = False) -> BridgeCoap:
    settings = datagram_settings(empty_ack_delay, exchange_lifetime, max_body, ack_timeout,
                                 max_retransmit, con_interval)
    return BridgeCoap(handler, clock, settings, rng, callback_handler)
