"""CoAP over WebSockets (RFC 8323 §4: coap+ws, coaps+ws) on wsproto, at the edge.

The opening handshake must be a GET of ``/.well-known/coap`` offering the
``coap`` subprotocol, which the answer names (§4.1); anything else gets 404 or
400 and the connection closes. Each binary WebSocket message is one CoAP
message for the connection's ``stream.Driver`` (the same driver as TCP's); a
text message closes the connection (1003). A message is buffered up to our
Max-Message-Size, never further: a longer one is handed over as its first
bytes and its size (a request gets 4.13, anything else an Abort).

Why wsproto directly, not ``twisted.web.websocket`` (Twisted 25.5+, itself on
wsproto): its ``WebSocketResource`` accepts every handshake without a
subprotocol in the answer, so a browser that asks for ``coap`` (as RFC 8323
requires) fails the connection; and it buffers a message of any length before
delivering it. Backpressure and the TLS layer are as for TCP (``stream``).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping,
                            RejectConnection, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError
from zope.interface import implementer

from .stream import Driver, Hub, StreamProtocol, log

PATH = "/.well-known/coap"
SUBPROTOCOL = "coap"
UNSUPPORTED_DATA = 1003  # WebSocket close code for a text message


@implementer(IPushProducer, IHandshakeListener)
class WebSocketProtocol(StreamProtocol):
    """A coap+ws or coaps+ws connection."""

    def __init__(self, hub: Hub, scheme: str):
        super().__init__(hub, scheme)
        self.ws = WSConnection(ConnectionType.SERVER)
        self._message = bytearray()
        self._size = 0  # bytes of the current message (more than kept, if over the limit)

    def connectionMade(self) -> None:
        if not self._admit():
            return
        # the opening handshake (and TLS's, for coaps+ws) within the deadline
        self._deadline = self.hub.clock.callLater(self.hub.cfg.handshake_timeout,
                                                  self._handshake_late)

    def handshakeCompleted(self) -> None:
        self._produce()  # the credential is read once the WebSocket handshake completes

    def dataReceived(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._event(event)
        except RemoteProtocolError as exc:
            log.debug("WebSocket from {peer} refused: {reason}", peer=self._host, reason=exc)
            if exc.event_hint is not None and self.driver is None:
                self._send_event(exc.event_hint)
            self.transport.loseConnection()
        except LocalProtocolError:
            self.transport.loseConnection()  # it closed while we were answering

    def _event(self, event: Any) -> None:
        if isinstance(event, BytesMessage):
            self._bytes(event)
        elif isinstance(event, Request):
            self._opening(event)
        elif isinstance(event, Ping):
            self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.ws.state.name != "CLOSED":
                self._send_event(event.response())
            self.transport.loseConnection()
        elif isinstance(event, TextMessage):
            if event.message_finished:
                self._send_event(CloseConnection(UNSUPPORTED_DATA, "CoAP needs binary messages"))
                self.transport.loseConnection()

    def _opening(self, request: Request) -> None:
        path = request.target.split("?", 1)[0]
        if path != PATH or SUBPROTOCOL not in request.subprotocols:
            log.debug("WebSocket from {peer} refused: {target} with subprotocols {offered}",
                      peer=self._host, target=request.target, offered=request.subprotocols)
            self._send_event(RejectConnection(status_code=404 if path != PATH else 400))
            self.transport.loseConnection()
            return
        self._send_event(AcceptConnection(subprotocol=SUBPROTOCOL))
        self._stop_deadline()
        peer = self.transport.getPeer()
        self.driver = Driver(self.hub, (peer.host, peer.port), self.scheme, True, self._write,
                             self._close)
        if self.tls_connection is not None:
            from ..dtls.context import credential_of as peer_credential  # with TLS only
            self.driver.peer.credential = peer_credential(self.tls_connection,
                                                          self.psk_identity)

    def _bytes(self, event: BytesMessage) -> None:
        data = event.data
        self._size += len(data)
        room = self.hub.settings.max_message_size + 1 - len(self._message)
        if room > 0:
            self._message += data[:room]
        if not event.message_finished:
            return
        message, size = bytes(self._message), self._size
        self._message = bytearray()
        self._size = 0
        if self.driver is not None:
            self.driver.message(message, size if size > len(message) else None)

    def _send_event(self, event: Any) -> None:
        self.transport.write(self.ws.send(event))

    def _write(self, out: List[bytes]) -> None:
        send = self.ws.send
        try:
            self.transport.writeSequence([send(BytesMessage(data=item)) for item in out])
        except LocalProtocolError:
            pass  # the peer closed: nothing more can be sent

    def _close(self, error: bool) -> None:
        try:
            self._send_event(CloseConnection(1000 if not error else 1002))
        except LocalProtocolError:
            pass
        super()._close(error)


class WebSocketFactory(Factory):
    noisy = False

    def __init__(self, hub: Hub, scheme: str):
        self.hub = hub
        self.scheme = scheme

    def buildProtocol(self, addr: Any) -> Optional[WebSocketProtocol]:
        protocol = WebSocketProtocol(self.hub, self.scheme)
        protocol.factory = self
        return protocol
