"""Datagrams the operating system refuses to send, counted and said once a minute.

Twisted's UDP port raises from ``write`` for every ``sendto`` error but EINTR (tried
again) and ECONNREFUSED (ignored): a route that went away (ENETUNREACH, EHOSTUNREACH), a
firewall's OUTPUT rule (EPERM), a broadcast address (EACCES), a full send buffer in a
burst of notifications (EAGAIN), an address of the other family (Twisted's
``InvalidAddressError``), a datagram over 64 KiB (``MessageLengthError``). Raised in the
middle of a drain, one device's unsendable datagram would put a traceback in the log and
delay every other device's datagrams of that drain to the next one.

So the UDP and DTLS edges catch ``SEND_ERRORS`` around their one ``write`` (a ``try``
costs nothing in CPython until it catches) and hand it to ``SendFailures``: the datagram
is dropped as the network would have dropped it (a CON message is sent again by the
message layer's retransmission, and its fate reported when that ends; a NON or an ACK is
lost as on any UDP path), counted by reason in
``coapbridge_coap_send_failed_total{transport,reason}``, and logged at warn once a
minute per reason with the last peer, so that a fan-out to an unreachable network does
not write a line per notification.
"""

from __future__ import annotations

import errno
from typing import Dict, Hashable, Tuple

from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="coapbridge.coap")

# what a UDP port's write raises for a datagram it does not send
SEND_ERRORS = (OSError, MessageLengthError, InvalidAddressError)
INTERVAL = 60.0  # seconds between two lines of one reason


def reason(exc: BaseException) -> str:
    """The label of a failed send: the errno's name (``EACCES``...), ``EMSGSIZE`` for
    Twisted's message-length error, ``EAFNOSUPPORT`` for an address the port's family
    cannot reach."""
    if isinstance(exc, MessageLengthError):
        return "EMSGSIZE"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, "errno %d" % exc.errno)
    if isinstance(exc, InvalidAddressError):
        return "EAFNOSUPPORT"
    return type(exc).__name__


class SendFailures:
    """The datagrams one transport (``udp``, ``dtls``) could not send, by reason."""

    def __init__(self, clock: IReactorTime, transport: str, interval: float = INTERVAL):
        self.clock = clock
        self.transport = transport
        self.interval = interval
        self.counts: Dict[str, int] = {}
        self._quiet_until: Dict[str, float] = {}  # reason -> when its next line may come
        self._unsaid: Dict[str, int] = {}  # reason -> failures since its last line

    def failed(self, exc: BaseException, peer: Hashable) -> None:
        """A datagram for ``peer`` that ``exc`` stopped: counted, and said when due."""
        why = reason(exc)
        self.counts[why] = self.counts.get(why, 0) + 1
        now = self.clock.seconds()
        if now < self._quiet_until.get(why, float("-inf")):
            self._unsaid[why] = self._unsaid.get(why, 0) + 1
            return
        self._quiet_until[why] = now + self.interval
        log.warn("CoAP over {transport}: a datagram to {peer} was not sent: {reason} "
                 "({error}); {unsaid} more since the last such line (dropped as the network "
                 "would drop it; coapbridge_coap_send_failed_total counts them)",
                 transport=self.transport, peer=str(peer), reason=why, error=str(exc),
                 unsaid=self._unsaid.pop(why, 0))

    def samples(self) -> Tuple[Tuple[Tuple[str, str], int], ...]:
        """((transport, reason), count) of every reason seen, for the metrics."""
        return tuple(((self.transport, why), n) for why, n in sorted(self.counts.items()))

