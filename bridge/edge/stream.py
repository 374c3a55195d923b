"""CoAP over reliable transports at the edge (RFC 8323): each connection's driver, and
the TCP/TLS protocol around it.

A ``Driver`` holds one sans-IO ``reliable.Connection`` and moves bytes, time and
the request handler's answers between it and Twisted: its requests are read
by the shared codec into the shared exchange layer (``reliable_requests``) and go
to the same handler as UDP's (``CoapRequests.handle``), with the connection's
``StreamPeer`` as the peer; answers and observe notifications go back on the connection, sized to
the smaller of the two Max-Message-Sizes, in BERT blocks where both CSMs offer BERT
(RFC 8323 §6). One Twisted timer per connection, due at the
connection's ``next_timer`` (CSM deadline, keepalive Ping, idle Release).

``StreamProtocol`` is the TCP (and, under Twisted's TLS layer, the TLS)
protocol: backpressure is Twisted's producer API (a transport whose write buffer
passes ``max_write_buffer`` pauses us, and we stop reading that connection and
hold the outcome of notifications until it drains, so the core queues the rest,
bounded as for any observer); a TLS handshake has ``handshake_timeout`` seconds.
``Hub`` is what every connection of the listeners shares: the limits
(``max_connections``, per address), the handler, the request side, the clock.
The WebSocket protocol (``edge.websocket``) drives the same ``Driver``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from ..coap.exchange import DELIVERED, Answer, Incoming
from ..coap.message import Message
from ..coap.options import Malformed
from ..coap.reliable import Connection, Ended, ReliableSettings, Received, TooLarge
from ..coap.reliable_requests import Requests, answer_room, bert_length
from ..settings import ReliableConfig
from ..logs import logger
from .handling import Handling, not_an_answer
from .timer import OneTimer

log = logger("reliable")

CLOSE_GRACE = 5.0  # s a closing connection may take to drain before it is cut


class StreamPeer:
    """The remote of a reliable connection's requests: hashable by identity, with the
    ``address`` and ``credential`` the core and the glue read (as a DTLS session's)."""

    __slots__ = ("key", "address", "credential", "scheme", "driver")

    def __init__(self, key: str, address: Tuple[str, int], scheme: str, driver: "Driver"):
        self.key = key
        self.address = address
        self.credential: Any = None
        self.scheme = scheme
        self.driver = driver

    @property
    def room(self) -> int:
        """The most payload one answer carries on this connection (the glue hands it to the
        core, whose download budget charges it)."""
        return answer_room(self.driver.message_size())

    def notify(self, ref: int, token: bytes, code: int, payload: bytes, observe: int,
               observation: Any, block_size: int, content_format: int) -> None:
        """Notification ``ref`` on this connection (``observation``: none here, RFC 8323
        has no message types; the connection's Max-Message-Size sizes it, not
        ``block_size``)."""
        self.driver.notify(ref, token, code, payload, observe, content_format)

    def __str__(self) -> str:
        host, port = self.address
        return ("%s:[%s]:%d" if ":" in host else "%s:%s:%d") % (self.scheme, host, port)

    __repr__ = __str__


def _unheard(*_: Any) -> None:
    """No one listens for it."""


class Hub:
    """What the connections of every RFC 8323 listener share (see the module)."""

    def __init__(self, cfg: ReliableConfig, handler: Callable[[Incoming], Any], clock: Any,
                 max_body: int, on_result: Optional[Callable[[int, str], None]] = None,
                 on_peer_gone: Optional[Callable[[Any], None]] = None):
        self.cfg = cfg
        self.settings = ReliableSettings(cfg.max_message_size, True, cfg.csm_timeout,
                                         cfg.keepalive, cfg.idle_timeout)
        self.handler = handler
        self.clock = clock
        self.requests = Requests(max_body, log, bert=_bert_on)
        self.drivers: Dict["Driver", None] = {}
        self.by_address: Dict[str, int] = {}
        self.connections = 0  # admitted, with or without a driver yet (WebSocket upgrade)
        self.refused = 0
        self.aborted = 0
        self._refusal_noted = float("-inf")
        # (ref, "delivered") for notifications once written; the peer that went
        self.on_result: Callable[[int, str], None] = on_result or _unheard
        self.on_peer_gone: Callable[[Any], None] = on_peer_gone or _unheard
        self._serial = 0

    def admit(self, host: str) -> bool:
        """Room for one more connection from ``host`` (counted if so)."""
        cfg = self.cfg
        if self.connections >= cfg.max_connections or \
                self.by_address.get(host, 0) >= cfg.max_connections_per_address:
            self.refused += 1
            now = self.clock.seconds()
            if now >= self._refusal_noted + 60.0:  # once a minute: a flood must not flood
                self._refusal_noted = now
                log.info("Connection from {peer} refused: {count} connections "
                         "(reliable.max_connections{,_per_address}; {refused} refused so far)",
                         peer=host, count=self.connections, refused=self.refused)
            return False
        self.by_address[host] = self.by_address.get(host, 0) + 1
        self.connections += 1
        return True

    def unadmit(self, host: str) -> None:
        """An admitted connection closed (``left`` does this for one with a driver)."""
        self.connections -= 1
        left = self.by_address.get(host, 1) - 1
        if left:
            self.by_address[host] = left
        else:
            self.by_address.pop(host, None)

    def joined(self, driver: "Driver") -> str:
        self._serial += 1
        self.drivers[driver] = None
        return "%d" % self._serial

    def left(self, driver: "Driver", host: str) -> None:
        if self.drivers.pop(driver, 0) is None:
            self.unadmit(host)
            self.on_peer_gone(driver.peer)

    def release_all(self, reason: str) -> None:
        for driver in list(self.drivers):
            driver.release(reason)

    def end_credentials(self, predicate: Callable[[Any], bool]) -> int:
        """Release the connections whose TLS credential ``predicate`` accepts (it left
        the registry)."""
        ended = 0
        for driver in list(self.drivers):
            credential = driver.peer.credential
            if credential is not None and predicate(credential):
                log.info("Connection {peer} ended: its credential left the registry",
                         peer=str(driver.peer))
                driver.release("credential removed")
                ended += 1
        return ended

    def expire(self) -> None:
        self.requests.expire(self.clock.seconds())

    def notify(self, ref: int, peer: StreamPeer, token: bytes, code: int, payload: bytes,
               observe: int, observation: Any, block_size: int, content_format: int) -> None:
        """Notification ``ref``, written on ``peer``'s connection (the notifications'
        router reaches the peers of every RFC 8323 listener through the hub)."""
        peer.notify(ref, token, code, payload, observe, observation, block_size,
                    content_format)

    def withdraw(self, ref: int, peer: StreamPeer) -> None:
        """Nothing to withdraw on a reliable connection: what it wrote is delivered."""


def _bert_on(peer: Any) -> bool:
    """Whether both CSMs of ``peer``'s connection offer BERT (the exchange layer asks)."""
    return bool(peer.driver.connection.bert)


class Driver(Handling):
    """One reliable connection between its transport and the handler (see the module)."""

    __slots__ = ("hub", "handler", "connection", "peer", "write", "close", "paused", "held",
                 "timer", "host", "closing")

    def __init__(self, hub: Hub, address: Tuple[str, int], scheme: str, websocket: bool,
                 write: Callable[[List[bytes]], None], close: Callable[[bool], None]):
        self.hub = hub
        self.handler = hub.handler
        self.host = address[0]
        self.connection = Connection(hub.settings, hub.clock.seconds(), websocket)
        self.peer = StreamPeer("", address, scheme, self)
        self.peer.key = "%s %s %d %s" % (scheme, address[0], address[1], hub.joined(self))
        self.write = write  # the messages to write, in order
        self.close = close  # close once written (True: after an Abort)
        self.paused = False  # the transport's write buffer is full
        self.held: List[int] = []  # notification refs whose outcome waits for the drain
        self.timer = OneTimer(hub.clock, self._fire)  # due at the connection's next_timer
        self.closing = False  # the transport was told to close (or closed)
        self._flush()

    # -- in --------------------------------------------------------------------------

    def data(self, data: bytes) -> None:
        self._events(self.connection.receive_data(data, self.hub.clock.seconds()))

    def message(self, data: bytes, size: Optional[int] = None) -> None:
        self._events(self.connection.receive_message(data, self.hub.clock.seconds(), size))

    def _events(self, events: List[Any]) -> None:
        for event in events:
            if type(event) is Received:
                if event.frame.code < 32:  # the bridge sends no requests: no responses
                    self._request(event.frame)
            elif type(event) is TooLarge:
                self._send(*self.hub.requests.too_large(event.token,
                                                        self.hub.settings.max_message_size))
            elif type(event) is Ended:
                self._ended(event)
        self._flush()

    def _request(self, frame: Any) -> None:
        hub = self.hub
        try:
            request = hub.requests.decode(frame, self.peer, hub.clock.seconds())
        except Malformed as exc:
            self._events(self.connection.abort("malformed message: %s" % exc))
            return
        if type(request) is not Incoming:  # an answer at once (a frame's code, token, body)
            self._send(*request)
            return
        self._dispatch(request)  # edge.handling: to the handler, its answer to _respond

    def _respond(self, result: Any, request: Incoming) -> None:
        if type(result) is not Answer:
            if not isinstance(result, Message):
                raise not_an_answer(result)
            result = Answer(result)
        size = self.message_size()
        self._send(*self.hub.requests.answer(request, result, size, self._bert(size)))
        self._flush()

    # -- out -------------------------------------------------------------------------

    def _send(self, code: int, token: bytes, body: bytes) -> None:
        for event in self.connection.send(code, token, body):
            self._ended(event)

    def notify(self, ref: int, token: bytes, code: int, payload: bytes, observe: int,
               content_format: int) -> None:
        if self.connection.ended is not None:
            return  # its relations end with the connection (Hub.left)
        size = self.message_size()
        self._send(*self.hub.requests.notification(token, code, payload, observe,
                                                   content_format, size, self._bert(size)))
        self._flush()
        if self.paused:
            self.held.append(ref)  # the core sends the next once this one is out
        else:
            self.hub.on_result(ref, DELIVERED)

    def message_size(self) -> int:
        """The largest message we send: the peer's Max-Message-Size, at most ours."""
        return min(self.connection.peer_max_message_size, self.hub.settings.max_message_size)

    def _bert(self, size: int) -> int:
        """The bytes of a BERT block in messages of ``size`` bytes; 0 where BERT is off."""
        return bert_length(size) if self.connection.bert else 0

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        held, self.held = self.held, []
        for ref in held:
            self.hub.on_result(ref, DELIVERED)

    def release(self, reason: str) -> None:
        self._events(self.connection.release(reason))

    def _ended(self, event: Ended) -> None:
        if event.error:
            self.hub.aborted += 1
        log.debug("Connection {peer} ended: {reason}", peer=str(self.peer), reason=event.reason)

    def _flush(self) -> None:
        connection = self.connection
        out = connection.data_to_send()
        if out:
            self.write(out)
        if connection.ended is not None:
            if not self.closing:
                self.closing = True
                self.timer.cancel()
                self.close(connection.ended.error)
            return
        self.timer.arm(connection.next_timer())

    def lost(self, reason: str) -> None:
        """The transport closed."""
        self.closing = True
        self.timer.cancel()
        for event in self.connection.lost(reason):
            self._ended(event)
        self.hub.left(self, self.host)

    def _fire(self) -> None:
        self._events(self.connection.handle_timer(self.hub.clock.seconds()))


def buffered_transport(transport: Any) -> Any:
    """The TCP transport under any TLS layer (the one whose ``bufferSize`` counts)."""
    while getattr(transport, "wrappedProtocol", None) is not None:  # a TLS layer
        transport = transport.transport
    return transport


@implementer(IPushProducer, IHandshakeListener)
class StreamProtocol(Protocol):
    """A coap+tcp or coaps+tcp connection (see the module)."""

    def __init__(self, hub: Hub, scheme: str):
        self.hub = hub
        self.scheme = scheme
        self.driver: Optional[Driver] = None
        self.tls_connection: Any = None  # set by edge.tls.TlsCreator
        self.psk_identity: Optional[str] = None
        self._deadline: Any = None
        self._grace: Any = None
        self._host = ""
        self._admitted = False
        self._producing = False

    def _admit(self) -> bool:
        """Room for this connection (else it is closed at once); without TLS, the
        producer is registered now."""
        self._host = self.transport.getPeer().host
        if not self.hub.admit(self._host):
            self.transport.abortConnection()
            return False
        self._admitted = True
        if self.tls_connection is None:
            self._produce()
        return True

    def connectionMade(self) -> None:
        if not self._admit():
            return
        peer = self.transport.getPeer()
        if self.tls_connection is not None:
            # the producer goes on after the handshake (Twisted's TLS pauses it until then)
            self._deadline = self.hub.clock.callLater(self.hub.cfg.handshake_timeout,
                                                      self._handshake_late)
        self.driver = Driver(self.hub, (peer.host, peer.port), self.scheme, False,
                             self._write, self._close)

    def _produce(self) -> None:
        """Our writes pause us once ``max_write_buffer`` bytes wait (backpressure)."""
        buffered_transport(self.transport).bufferSize = self.hub.cfg.max_write_buffer
        self.transport.registerProducer(self, True)
        self._producing = True

    def handshakeCompleted(self) -> None:
        from ..dtls.context import credential_of as peer_credential  # OpenSSL: with TLS
        self._stop_deadline()
        self._produce()
        if self.driver is not None and self.tls_connection is not None:
            self.driver.peer.credential = peer_credential(self.tls_connection,
                                                          self.psk_identity)

    def _handshake_late(self) -> None:
        self._deadline = None
        log.debug("TLS handshake from {peer} not finished within {timeout} s",
                  peer=self._host, timeout=self.hub.cfg.handshake_timeout)
        self.transport.abortConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self.driver is not None:
            self.driver.data(data)

    def _write(self, out: List[bytes]) -> None:
        self.transport.writeSequence(out)

    def _close(self, error: bool) -> None:
        if self._grace is None:
            if self._producing:
                self._producing = False
                self.transport.unregisterProducer()  # else TLS waits for it to close
            self.transport.loseConnection()
            self._grace = self.hub.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self.driver is not None:
            driver, self.driver = self.driver, None
            driver.lost(reason.getErrorMessage() if reason is not None else "closed")
        elif self._admitted:
            self.hub.unadmit(self._host)  # a WebSocket that never upgraded
        self._admitted = False

    # IPushProducer: our writes filled the transport's buffer
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # read no more requests from it (the TCP transport)
        if self.driver is not None:
            self.driver.pause()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()
        if self.driver is not None:
            self.driver.resume()

    def stopProducing(self) -> None:
        pass  # the connection is going: connectionLost follows


class StreamFactory(Factory):
    """Builds a ``StreamProtocol`` per connection of one listener."""

    noisy = False

    def __init__(self, hub: Hub, scheme: str):
        self.hub = hub
        self.scheme = scheme

    def buildProtocol(self, addr: Any) -> StreamProtocol:
        protocol = StreamProtocol(self.hub, self.scheme)
        protocol.factory = self
        return protocol
