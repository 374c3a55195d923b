"""The datagram transports as services: plain CoAP on UDP, and CoAPs (DTLS) on its own
UDP port.

Each is built with an ``Intake`` (``edge/intake.py``) and its settings, and builds its
transport at start from them (constructor arguments only); the transport joins
``transports`` (``glue/transports.py``) once its port reads, so notifications and
metrics reach it, and leaves before its port closes. The RFC 8323 listeners are the
same shape in ``edge/reliable_service.py``.

Their ports are bound with ``reactor.listenUDP`` (``edge/udp.py``): Twisted has no
datagram endpoint, so ``StreamServerEndpointService`` does not apply here.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.error import CannotListenError

from .settings import Config, CoapConfig, StartupError, env_name
from .settings.dtls import warnings_of as dtls_warnings
from .edge import coap as coap_edge
from .edge.intake import Intake
from .logs import logger

log = logger("bridge")


def cannot_listen(what: str, protocol: str, exc: CannotListenError, key: str,
                   hint: str = "") -> str:
    """The start-up line for a port that cannot be bound: ``key`` is its port setting
    (``coap.bind_port``), beside which is its address setting."""
    error = exc.socketError
    reason = getattr(error, "strerror", None) or str(error)
    number = getattr(error, "errno", None)
    address_key = key.rpartition(".")[0] + ".bind_address"
    where = "cannot listen for %s on %s %s port %s" % (what, protocol, exc.interface or "*",
                                                      exc.port)
    if number == errno.EADDRNOTAVAIL:
        return ("%s: this host has no address %s; give %s (%s) one of its addresses, or "
                "0.0.0.0 or :: for all of them" % (where, exc.interface, address_key,
                                                   env_name(address_key)))
    if number == errno.EACCES:
        return ("%s: %s (ports below 1024 need root or CAP_NET_BIND_SERVICE); choose another "
                "port with %s (%s)" % (where, reason, key, env_name(key)))
    return ("%s: %s; stop the program that uses it (another bridge?) or choose another port "
            "with %s (%s%s)" % (where, reason, key, env_name(key), hint))


def datagram_settings(cfg: CoapConfig) -> Any:
    """The CoAP message layer's settings (``coap.*``), for UDP and for CoAPs alike."""
    return coap_edge.datagram_settings(cfg.empty_ack_delay, cfg.exchange_lifetime,
                                       cfg.max_body, cfg.ack_timeout, cfg.max_retransmit,
                                       cfg.con_notification_interval)


class CoapService(Service):
    """Plain CoAP (``coap.*``): a ``BridgeCoap`` on a UDP port, the observe relations its
    predecessor kept (``relations``) started once it reads; the last transport to stop."""

    def __init__(self, intake: Intake, cfg: CoapConfig, relations: Any, notifications: Any,
                 inherited: Optional[int] = None):
        self.intake = intake
        self.cfg = cfg
        self.relations = relations
        self.notifications = notifications
        self.inherited = inherited  # a worker's socket of the supervisor's group
        self.port: Any = None
        self.protocol: Optional[coap_edge.BridgeCoap] = None

    def startService(self) -> None:
        intake, cfg = self.intake, self.cfg
        # the request handler answers through the driver's respond: no Deferred per request
        self.protocol = coap_edge.BridgeCoap(intake.handler, intake.reactor,
                                             datagram_settings(cfg), intake.rng,
                                             callback_handler=True,
                                             on_result=intake.on_result,
                                             on_peer_gone=intake.on_peer_gone)
        try:
            self.port = coap_edge.listen(intake.reactor, self.protocol, cfg.bind_port,
                                         cfg.bind_address, shared=intake.shared,
                                         inherited=self.inherited)
        except CannotListenError as exc:
            raise StartupError(cannot_listen("CoAP", "UDP", exc, "coap.bind_port"))
        intake.transports.join(tuple, self.protocol)  # its peers are (host, port) tuples
        Service.startService(self)
        host = self.port.getHost()
        log.info("CoAP listening on {host}:{port}", host=host.host, port=host.port)
        self.relations.start(self.protocol)  # the relations its predecessor held

    def stopService(self) -> Any:
        Service.stopService(self)
        self.relations.stop()  # they stay in the file for the next start
        self.intake.transports.leave(tuple)
        self.notifications.stop()  # the last transport: what is queued is not sent
        if self.port is not None:
            port, self.port = self.port, None
            port.stopReading()  # no new requests; those already stored are answered now
            self.intake.commit()
            return port.stopListening()
        return None


class DtlsService(Service):
    """CoAPs (``dtls.enabled``): DTLS sessions in front of a CoAP message layer of their own
    (the same request handler and settings as plain CoAP), on their own UDP port; started
    after plain CoAP, stopped before it. ``in_use``: whether a session's device observes
    (then it is not idle, docs/device-api.md); ``on_handshake``: each handshake's outcome
    (the metrics); ``warn``: log the configuration's DTLS warnings (one process does)."""

    def __init__(self, intake: Intake, config: Config, in_use: Callable[[Any], bool],
                 on_handshake: Callable[[str, str, float], None], warn: bool = True,
                 inherited: Optional[int] = None):
        self.intake = intake
        self.config = config
        self.in_use = in_use
        self.on_handshake = on_handshake
        self.warn = warn
        self.inherited = inherited  # a worker's socket of the supervisor's group
        self.port: Any = None
        self.transport: Any = None

    def startService(self) -> None:
        from .dtls.events import DtlsPeer
        from .edge import dtls as dtls_edge  # OpenSSL: only when DTLS is on
        from .edge.datagram import DatagramDriver
        intake, config = self.intake, self.config
        cfg, view = config.dtls, intake.registry_view
        coap = DatagramDriver(intake.handler, intake.reactor, datagram_settings(config.coap),
                              intake.rng, callback_handler=True, on_result=intake.on_result,
                              on_peer_gone=intake.on_peer_gone)
        # psk_key: the handshake's synchronous lookup in the registry's copy
        self.transport = dtls_edge.DtlsTransport(cfg, coap, intake.reactor, view.psk_key,
                                                 in_use=self.in_use,
                                                 on_handshake=self.on_handshake)
        interface = cfg.bind_address or config.coap.bind_address
        try:
            self.port = dtls_edge.listen(intake.reactor, self.transport, cfg.bind_port,
                                         interface, shared=intake.shared,
                                         inherited=self.inherited)
        except CannotListenError as exc:
            raise StartupError(cannot_listen("CoAPs", "UDP", exc, "dtls.bind_port"))
        view.on_change.append(self.registry_changed)
        intake.counts.register(DtlsPeer, "dtls")
        # notifications to its sessions go through its message layer
        intake.transports.join(DtlsPeer, self.transport, sender=coap)
        Service.startService(self)
        host = self.port.getHost()
        log.info("CoAPs (DTLS) listening on {host}:{port}", host=host.host, port=host.port)
        for line in dtls_warnings(config) if self.warn else ():
            log.warn("{reason}", reason=line)

    def registry_changed(self) -> None:
        """End the sessions whose certificate or PSK identity left the registry, and those
        whose PSK key changed."""
        view = self.intake.registry_view
        self.transport.end_sessions(view.credential_gone)
        self.transport.end_changed_keys(view.psk_key)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            from .dtls.events import DtlsPeer
            view = self.intake.registry_view
            if self.registry_changed in view.on_change:
                view.on_change.remove(self.registry_changed)
            port, self.port = self.port, None
            # as plain CoAP: no new records; the uplinks already stored are answered
            # over their sessions now, and only then does each get its close_notify
            port.stopReading()
            self.intake.commit()
            self.intake.transports.leave(DtlsPeer)
            self.transport.close_all()
            return port.stopListening()
        return None
