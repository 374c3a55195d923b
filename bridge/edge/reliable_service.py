"""The RFC 8323 listeners as one service: coap+tcp, coaps+tcp, coap+ws and coaps+ws, each
on its own TCP port (``reliable.tcp``/``tls``/``ws``/``wss``), off by default.

Each listener is a Twisted server endpoint (``TCP4ServerEndpoint`` or
``TCP6ServerEndpoint``) listening with a factory of ``stream.StreamProtocol`` or
``websocket.WebSocketProtocol``, under Twisted's TLS layer (``TLSMemoryBIOFactory``
with ``tls.TlsCreator``) for the secure ones; all share one ``stream.Hub``.
A worker of a supervised bridge (``coap.workers`` > 1) listens instead on the
supervisor's listening sockets, which every worker accepts from (``edge/shared_tcp.py``).
Each listener is a ``StreamServerEndpointService``, started and stopped by this service,
bound before the next service starts (``edge/stream_listen.py``): a port in use is a
``StartupError``, not a logged failure; an adopted socket is Twisted's
``AdoptedStreamServerEndpoint`` (``shared_tcp.endpoint``). The listeners' hub joins
``transports`` (``glue/transports.py``) for ``StreamPeer`` while they run; the service is built with an
``Intake`` (``edge/intake.py``) and the settings, nothing assigned to it later.
Started after plain CoAP (they feed the same request handler); stopped
before it: no new connections, the uplinks already stored answered, then a
Release to every connection.
"""

from __future__ import annotations

import resource
from typing import Any, Dict, List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall

from ..settings import Config, StartupError
from ..settings.reliable import enabled, tls_files
from ..logs import logger
from . import shared_tcp, stream_listen
from .intake import Intake
from .timer import repeating
from .stream import Hub, StreamFactory, StreamPeer
from .websocket import PATH, WebSocketFactory

log = logger("reliable")

# name -> (scheme, WebSocket?, TLS?, environment names of its address and port)
LISTENERS = {
    "tcp": ("coap+tcp", False, False, "COAP_TCP_BIND_PORT"),
    "tls": ("coaps+tcp", False, True, "COAP_TLS_BIND_PORT"),
    "ws": ("coap+ws", True, False, "COAP_WS_BIND_PORT"),
    "wss": ("coaps+ws", True, True, "COAP_WSS_BIND_PORT"),
}
SWEEP_SECONDS = 10.0  # Block1 uploads left unfinished are forgotten this often


def raise_descriptor_limit(wanted: int) -> int:
    """Raise the soft limit of open files towards ``wanted`` (at most the hard limit): a
    listener of many connections needs one descriptor each. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class ReliableService(Service):
    """The enabled RFC 8323 listeners (see the module)."""

    def __init__(self, intake: Intake, config: Config, cannot_listen: Any,
                 inherited: Optional[Dict[str, int]] = None):
        self.intake = intake
        self.config = config
        self.inherited = inherited or {}  # a worker's: name -> the supervisor's socket
        self.cannot_listen = cannot_listen  # (what, protocol, exc, key, hint) -> the line
        self.hub: Optional[Hub] = None
        self.listeners: List[StreamServerEndpointService] = []
        self.ports: List[Any] = []  # the listening ports, as their endpoints gave them
        self._sweep: Optional[LoopingCall] = None

    def startService(self) -> None:
        intake, config = self.intake, self.config
        cfg = config.reliable
        self.hub = hub = Hub(cfg, intake.handler, intake.reactor, config.coap.max_body,
                             on_result=intake.on_result, on_peer_gone=intake.on_peer_gone)
        # the request metrics' transport label: tcp, tls, ws or wss by the peer's scheme
        intake.counts.register_by(
            StreamPeer, "scheme", {scheme: name for name, (scheme, *_) in LISTENERS.items()})
        limit = raise_descriptor_limit(cfg.max_connections + 1024)
        creator = None
        for name in enabled(config):
            scheme, websocket, secure, env = LISTENERS[name]
            listener = getattr(cfg, name)
            factory: Any = (WebSocketFactory if websocket else StreamFactory)(hub, scheme)
            if secure:
                if creator is None:
                    from . import tls as tls_edge  # OpenSSL: only with TLS
                    creator = tls_edge.TlsCreator(tls_files(config),
                                                  intake.registry_view.psk_key)
                from twisted.protocols.tls import TLSMemoryBIOFactory
                factory = TLSMemoryBIOFactory(creator, False, factory)
            self._listen(listener, factory, name, scheme, env, websocket)
        if limit < cfg.max_connections:
            log.warn("Open-file limit {limit} is below reliable.max_connections "
                     "{max_connections}: raise it (ulimit -n, LimitNOFILE)", limit=limit,
                     max_connections=cfg.max_connections)
        intake.transports.join(StreamPeer, hub)  # notifications to its connections' peers
        intake.registry_view.on_change.append(self.registry_changed)
        self._sweep = repeating(intake.reactor, hub.expire)
        self._sweep.start(SWEEP_SECONDS, now=False).addErrback(
            lambda f: log.failure("Reliable transports' sweep stopped", failure=f))
        Service.startService(self)

    def _listen(self, listener: Any, factory: Any, name: str, scheme: str, env: str,
                websocket: bool) -> None:
        """``factory`` listening as ``name``'s child service; a port that cannot be bound
        (or an inherited descriptor that is not its socket) is a ``StartupError``."""
        reactor = self.intake.reactor
        try:
            if name in self.inherited:
                endpoint = shared_tcp.endpoint(reactor, self.inherited[name],
                                               listener.bind_port)
            else:
                interface = listener.bind_address or self.config.coap.bind_address
                kind = endpoints.TCP6ServerEndpoint if ":" in interface else \
                    endpoints.TCP4ServerEndpoint
                endpoint = kind(reactor, listener.bind_port, shared_tcp.BACKLOG, interface)

            def announce(port: Any) -> None:
                self.ports.append(port)
                host = port.getHost()
                log.info("CoAP over {scheme} listening on {host}:{port}{path}",
                         scheme=scheme, host=host.host, port=host.port,
                         path=PATH if websocket else "")
            child = stream_listen.listening(endpoint, factory, announce)
        except CannotListenError as exc:
            raise StartupError(self.cannot_listen(scheme, "TCP", exc,
                                                  "reliable.%s.bind_port" % name, ", " + env))
        self.listeners.append(child)

    def registry_changed(self) -> None:
        if self.hub is not None:
            self.hub.end_credentials(self.intake.registry_view.credential_gone)

    def stopService(self) -> Any:
        Service.stopService(self)
        view = self.intake.registry_view
        if self.registry_changed in view.on_change:
            view.on_change.remove(self.registry_changed)
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        listeners, self.listeners, self.ports = self.listeners, [], []
        stopped = [child.stopService() for child in listeners]
        if self.hub is not None:
            self.intake.commit()  # what is stored is answered before the Release
            self.intake.transports.leave(StreamPeer)
            self.hub.release_all("the bridge is stopping")
        return defer.gatherResults([d for d in stopped if d is not None])

