"""The one place where the DTLS edge meets the CoAP side.

The sans-IO DTLS server (``bridge.dtls.server``) knows nothing of CoAP; the plain-UDP
transport (``edge.coap.BridgeCoap``) owns the CoAP endpoint. Until both are driven by
one datagram driver, this adapter joins them: a finished handshake makes the peer
trusted (its handshake proved its address, RFC 7252 §11.3), each record's plaintext is
one CoAP datagram from the peer, an ended session is forgotten (its observe relations
end), and what the endpoint sends to a ``DtlsPeer`` comes back here to be encrypted.
"""

from __future__ import annotations

from typing import Any, Callable

from ..dtls.events import DtlsPeer


class CoapOverDtls:
    """Binds the two once, so that a record or a send costs no call of its own: the
    driver calls ``received(data, peer)`` (``BridgeCoap.received``) for each plaintext,
    and the endpoint's output for a peer that is not a (host, port) pair goes straight
    to ``send(data, peer)`` (the DTLS driver's)."""

    def __init__(self, coap: Any, send: Callable[[bytes, DtlsPeer], None]):
        # BridgeCoap: .received(data, peer), .trust(peer), .forget(peer), and the hook its
        # output for a peer that is not a (host, port) pair goes to
        self.coap = coap
        self.received: Callable[[bytes, DtlsPeer], None] = coap.received
        coap.send_to_session = send

    def established(self, peer: DtlsPeer) -> None:
        self.coap.trust(peer)

    def ended(self, peer: DtlsPeer) -> None:
        self.coap.forget(peer)
