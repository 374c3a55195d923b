"""The service tree: the registry and the outbox, the package store, MQTT, the core's timer,
metrics, and CoAP last; stopped in reverse, each after the one before it has stopped.

``BridgeService`` is a ``MultiService`` of one child per resource; the runtime
glue they serve is ``bridge.glue.bridge.Bridge``. Only the composition root
(``tap.py``) picks the reactor.
"""

from __future__ import annotations

import errno
import os
import random
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .settings import Config, StartupError, env_name
from .settings.dtls import warnings_of as dtls_warnings
from .edge import coap as coap_edge
from .edge import outbox_files, reliable_service
from .edge.data_dir import DataDirLock
from .settings.reliable import enabled as enabled_listeners
from .edge.outbox import Outbox
from .glue.bridge import Bridge
from .logs import logger, unfiltered_logger
from .registry import Registry

log = logger("bridge")

TICK_SECONDS = 0.25
DRAIN_TIMEOUT = 2.0  # s to wait for the last PUBACKs when stopping

__all__ = ["Bridge", "BridgeService"]


def _cannot_listen(what: str, protocol: str, exc: CannotListenError, key: str,
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


class _DataDirService(Service):
    """DATA_DIR held for this bridge while it runs (``bridge.edge.data_dir``): first, so a
    second bridge on it is refused before it opens any of its files. A worker runs under
    its supervisor's lock and has none."""

    def __init__(self, data_dir: str):
        self.lock = DataDirLock(data_dir)

    def startService(self) -> None:
        self.lock.acquire(1)
        Service.startService(self)

    def stopService(self) -> None:
        Service.stopService(self)
        self.close()  # stopped last: every file of DATA_DIR is closed by now

    def close(self) -> None:
        self.lock.release()


class _RegistryService(Service):
    """The device registry, open while the service runs: the SQLite file, or the shared
    PostgreSQL registry (``bridge.edge.shared_registry``) with its thread pool and the
    journal of the platform's changes for it (``bridge.edge.registry_journal``)."""

    def __init__(self, bridge: Bridge, config: Config):
        self.bridge = bridge
        self.target = config.registry_target
        self.pool_size = config.registry.pool_size
        self.journal_path = os.path.join(config.data_dir, "registry-journal.sqlite3")
        self.synchronous = config.outbox.synchronous
        self.threadpool: Optional[ThreadPool] = None

    def startService(self) -> None:
        if self.target.shared:
            # before the reactor runs: opening blocks, and a failure is a start-up error
            from .edge.shared_registry import open_shared  # psycopg: only when asked for
            self.threadpool = ThreadPool(minthreads=1, maxthreads=self.pool_size + 1,
                                         name="coapbridge-registry")
            self.threadpool.start()
            registry = open_shared(self.target, self.pool_size, self.bridge.reactor,
                                   self.threadpool)
            self.bridge.registry = registry  # closed with it if the journal cannot open
            self._open_journal(registry)
        else:
            registry = Registry(self.target.path)
        self.bridge.registry = registry
        log.info("Device registry {registry}: {count:plural:device}", registry=self.target.display,
                 count=len(registry.entries()))
        if self.threadpool is not None:
            registry.start()  # the shared registry begins listening
        Service.startService(self)

    def _open_journal(self, registry: Any) -> None:
        from .edge.registry_journal import RegistryJournal
        journal = RegistryJournal(self.journal_path, self.synchronous)
        changes = self.bridge.platform_changes
        changes.attach(journal, shared_file=bool(self.bridge.worker))
        registry.changes = changes
        if len(journal):
            log.info("Platform changes waiting for the registry in {path}: {count}",
                     count=len(journal), path=self.journal_path)

    def stopService(self) -> Any:
        Service.stopService(self)
        registry = self.bridge.registry
        if registry is not None and self.threadpool is not None:  # the shared registry
            self.bridge.registry = None
            return registry.stop().addBoth(self._pool_stopped)
        self.close()
        return None

    def _pool_stopped(self, result: Any) -> Any:
        self.close()
        return result

    def close(self) -> None:
        if self.bridge.registry is not None:
            registry, self.bridge.registry = self.bridge.registry, None
            registry.close()
        journal = self.bridge.platform_changes.detach()
        if journal is not None:
            journal.close()
        if self.threadpool is not None:
            pool, self.threadpool = self.threadpool, None
            pool.stop()


class _OutboxService(Service):
    """The outbox: opened (and locked for this process) and its backlog restored at start,
    after taking over the entries of outbox files no process owns any more (the single
    process or worker 1 does: see ``bridge.edge.outbox_files``); written and closed at stop."""

    def __init__(self, bridge: Bridge, config: Config, worker: int):
        self.bridge = bridge
        self.path = config.worker_outbox_path(worker)
        self.synchronous = config.outbox.synchronous
        self.data_dir = config.data_dir
        self.workers = config.coap.workers if worker else 1
        self.adopts = worker in (0, 1)
        self.lock: Optional[outbox_files.OutboxLock] = None

    def startService(self) -> None:
        outbox = Outbox(self.path, self.synchronous)
        try:
            self.lock = outbox_files.hold(outbox)
        except StartupError:
            outbox.close()
            raise
        self.bridge.outbox = outbox
        if self.adopts:
            outbox_files.adopt_leftovers(outbox, self.data_dir, self.workers, self.synchronous)
        self.bridge.outbox_commit.restore()
        Service.startService(self)

    def stopService(self) -> None:
        Service.stopService(self)
        commit = self.bridge.outbox_commit
        if commit.outbox is not None:
            commit.stop()
            count, _ = commit.outbox.stats()
            if count:
                log.info("{count:plural:uplink} kept in the outbox for the next start", count=count)
        self.close()

    def close(self) -> None:
        commit = self.bridge.outbox_commit
        if commit.outbox is not None:
            outbox, commit.outbox = commit.outbox, None
            outbox.close()
        if self.lock is not None:  # after SQLite's connection: see bridge/edge/outbox_files.py
            lock, self.lock = self.lock, None
            lock.release()


class _PackageService(Service):
    """The package cache directory; downloads in progress end when the service stops."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge

    def startService(self) -> None:
        packages = self.bridge.packages
        try:
            packages.start()
        except OSError as exc:
            raise StartupError("cannot use the package cache %s: %s; it must be a directory "
                               "this user can write" % (exc.filename or packages.directory,
                                                        exc.strerror or exc))
        Service.startService(self)

    def stopService(self) -> None:
        Service.stopService(self)
        self.bridge.sessions.stop()  # OTA downloads and upstream provisioning sessions


class _MqttService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge

    def startService(self) -> None:
        Service.startService(self)
        self.bridge.link.start()

    def stopService(self) -> defer.Deferred:
        Service.stopService(self)
        d = self.bridge.drain(timeout=DRAIN_TIMEOUT)
        d.addCallback(lambda _: self.bridge.link.stop())
        return d


class _TickService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.loop = LoopingCall(bridge.tick)
        self.loop.clock = bridge.reactor

    def startService(self) -> None:
        Service.startService(self)
        self.loop.start(TICK_SECONDS, now=False).addErrback(
            lambda f: log.failure("Core timer stopped", failure=f))

    def stopService(self) -> None:
        Service.stopService(self)
        if self.loop.running:
            self.loop.stop()


class _MetricsService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.port: Any = None

    def startService(self) -> None:
        from .edge.metrics import MetricsSite
        cfg = self.bridge.config.metrics
        if cfg.port:
            site = MetricsSite(self.bridge.prometheus.registry, self.bridge.readiness.check,
                               cfg.idle_timeout, cfg.max_connections,
                               self.bridge.platform_changes.notes)
            # a worker's metrics are read by its supervisor, which serves metrics.port
            port, host = (0, "127.0.0.1") if self.bridge.worker else (cfg.port,
                                                                     cfg.bind_address)
            try:
                self.port = self.bridge.reactor.listenTCP(port, site, interface=host)
            except CannotListenError as exc:
                raise StartupError(_cannot_listen("metrics", "TCP", exc, "metrics.port",
                                                  ", 0: off"))
            log.info("Metrics on http://{host}:{port}/metrics (probes: /healthz, /readyz)",
                     host=host, port=self.port.getHost().port)
        Service.startService(self)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class _CoapService(Service):
    def __init__(self, bridge: Bridge, inherited: Optional[int] = None):
        self.bridge = bridge
        self.inherited = inherited  # a worker's socket of the supervisor's group
        self.port: Any = None
        self.protocol: Optional[coap_edge.BridgeCoap] = None

    def startService(self) -> None:
        cfg = self.bridge.config.coap
        # the request handler answers through the driver's respond: no Deferred per request
        self.protocol = coap_edge.BridgeCoap(self.bridge.requests.handle, self.bridge.reactor,
                                             datagram_settings(cfg), self.bridge.rng,
                                             callback_handler=True)
        self.protocol.on_result = self.bridge.notified
        self.protocol.on_peer_gone = self.bridge.peer_gone
        try:
            self.port = coap_edge.listen(self.bridge.reactor, self.protocol, cfg.bind_port,
                                         cfg.bind_address, shared=bool(self.bridge.worker),
                                         inherited=self.inherited)
        except CannotListenError as exc:
            raise StartupError(_cannot_listen("CoAP", "UDP", exc, "coap.bind_port"))
        self.bridge.coap = self.protocol
        self.bridge.notifications.transport = self.protocol
        self.bridge.coap_listening = True
        Service.startService(self)
        host = self.port.getHost()
        log.info("CoAP listening on {host}:{port}", host=host.host, port=host.port)
        self.bridge.relations.start(self.protocol)  # the relations its predecessor held

    def stopService(self) -> Any:
        Service.stopService(self)
        self.bridge.relations.stop()  # they stay in the file for the next start
        self.bridge.coap_listening = False
        self.bridge.notifications.stop()
        if self.port is not None:
            port, self.port = self.port, None
            port.stopReading()  # no new requests; those already stored are answered now
            self.bridge.commit()
            return port.stopListening()
        return None


def datagram_settings(cfg: Any) -> Any:
    """The CoAP message layer's settings (``coap.*``), for UDP and for CoAPs alike."""
    return coap_edge.datagram_settings(cfg.empty_ack_delay, cfg.exchange_lifetime,
                                       cfg.max_body, cfg.ack_timeout, cfg.max_retransmit,
                                       cfg.con_notification_interval)


class _DtlsService(Service):
    """CoAPs (``dtls.enabled``): DTLS sessions in front of a CoAP message layer of their own
    (the same request handler and settings as plain CoAP), on their own UDP port; started
    after plain CoAP, stopped before it."""

    def __init__(self, bridge: Bridge, inherited: Optional[int] = None):
        self.bridge = bridge
        self.inherited = inherited  # a worker's socket of the supervisor's group
        self.port: Any = None
        self.transport: Any = None
        self.peer_type: Any = None

    def startService(self) -> None:
        from .edge import dtls as dtls_edge  # OpenSSL: only when DTLS is on
        bridge = self.bridge
        cfg = bridge.config.dtls
        view = bridge.registry_view
        from .dtls.events import DtlsPeer
        from .edge.datagram import DatagramDriver
        coap = DatagramDriver(bridge.requests.handle, bridge.reactor,
                              datagram_settings(bridge.config.coap), bridge.rng,
                              callback_handler=True)
        coap.on_result = bridge.notified
        coap.on_peer_gone = bridge.peer_gone
        # psk_key: the handshake's synchronous lookup in the registry's copy
        # observes: a session whose device only observes is not idle (docs/device-api.md)
        self.transport = dtls_edge.DtlsTransport(cfg, coap, bridge.reactor, view.psk_key,
                                                 in_use=bridge.core.observes)
        interface = cfg.bind_address or bridge.config.coap.bind_address
        try:
            self.port = dtls_edge.listen(bridge.reactor, self.transport, cfg.bind_port,
                                         interface, shared=bool(bridge.worker),
                                         inherited=self.inherited)
        except CannotListenError as exc:
            raise StartupError(_cannot_listen("CoAPs", "UDP", exc, "dtls.bind_port"))
        view.on_change.append(self.registry_changed)
        self.transport.on_handshake = bridge.handshakes.record
        bridge.requests.counts.register(DtlsPeer, "dtls")
        bridge.dtls = self.transport
        self.peer_type = DtlsPeer
        bridge.notifications.attach(DtlsPeer, coap)  # notifications to its sessions
        Service.startService(self)
        host = self.port.getHost()
        log.info("CoAPs (DTLS) listening on {host}:{port}", host=host.host, port=host.port)
        for line in dtls_warnings(bridge.config) if bridge.worker <= 1 else ():
            log.warn("{reason}", reason=line)

    def registry_changed(self) -> None:
        """End the sessions whose certificate or PSK identity left the registry, and those
        whose PSK key changed."""
        view = self.bridge.registry_view
        self.transport.end_sessions(view.credential_gone)
        self.transport.end_changed_keys(view.psk_key)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            view = self.bridge.registry_view
            if self.registry_changed in view.on_change:
                view.on_change.remove(self.registry_changed)
            port, self.port = self.port, None
            # as plain CoAP: no new records; the uplinks already stored are answered
            # over their sessions now, and only then does each get its close_notify
            port.stopReading()
            self.bridge.commit()
            self.bridge.notifications.detach(self.peer_type)
            self.transport.close_all()
            return port.stopListening()
        return None


class BridgeService(MultiService):
    """Registry and outbox, package store, MQTT, the core's timer, metrics, CoAP last.

    Stopped in reverse, each child once the one after it has stopped (CoAP stops reading
    and answers what it stored; MQTT waits for the last PUBACKs; then the files close).
    A start-up problem (a port in use, DATA_DIR not writable, a damaged file) is a
    ``StartupError``: the files opened so far are closed and ``refuse`` gets its one
    line (``tap.py`` prints it and exits 2); without ``refuse`` it is raised.

    ``worker`` (1..coap.workers) makes it one worker of a supervised bridge
    (``bridge.supervisor``): its own outbox file and MQTT client id, the CoAP port shared
    with the other workers, its metrics on a private local port; once started it logs a
    ``worker_event="started"`` event naming that port, for the supervisor. ``sockets``
    ({"coap": fd, "dtls": fd}, ``bridge.edge.udp.inherited``; "tcp", "tls", "ws", "wss":
    ``bridge.edge.shared_tcp.inherited``): its sockets of the supervisor's, listened on
    instead of binding its own."""

    def __init__(self, config: Config, reactor: Any, rng: Optional[random.Random] = None,
                 refuse: Optional[Callable[[str], None]] = None,
                 log_observer: Optional[ILogObserver] = None, worker: int = 0,
                 sockets: Optional[Dict[str, int]] = None):
        MultiService.__init__(self)
        sockets = sockets or {}
        self.config = config
        self.refuse = refuse
        self.log_observer = log_observer
        self.worker = worker
        self.bridge = Bridge(config, reactor, rng, worker)
        self._files: List[Any] = [] if worker else [_DataDirService(config.data_dir)]
        self._files += [_RegistryService(self.bridge, config),
                        _OutboxService(self.bridge, config, worker)]
        self._metrics = _MetricsService(self.bridge)
        children: List[IService] = self._files + [
            _PackageService(self.bridge), _MqttService(self.bridge), _TickService(self.bridge),
            self._metrics, _CoapService(self.bridge, sockets.get("coap"))]
        if config.dtls.enabled:
            children.append(_DtlsService(self.bridge, sockets.get("dtls")))
        if enabled_listeners(config):
            children.append(reliable_service.ReliableService(self.bridge, _cannot_listen,
                                                             sockets))
        for child in children:
            child.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> Any:
        """Joined to twistd's application: ``log_observer`` (if any) becomes its log observer
        (twistd starts logging to an application's ``ILogObserver`` component)."""
        if self.log_observer is not None:
            parent.setComponent(ILogObserver, self.log_observer)
        return MultiService.setServiceParent(self, parent)

    def startService(self) -> None:
        try:
            MultiService.startService(self)
        except StartupError as exc:
            for holder in reversed(self._files):
                holder.close()
            if self.refuse is None:
                raise
            self.refuse(str(exc))
            return
        if self.worker:
            port = self._metrics.port
            # the supervisor acts on this event: it is logged at any log_level
            unfiltered_logger("bridge").info(
                "Worker {worker} started (pid {pid})", worker=self.worker, pid=os.getpid(),
                worker_event="started",
                metrics_port=port.getHost().port if port is not None else 0)

    def stopService(self) -> defer.Deferred:
        Service.stopService(self)
        self.bridge.readiness.stopping()
        d: defer.Deferred = defer.succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, child=child: child.stopService())
            d.addErrback(self._stop_failed, child)
        d.addCallback(lambda _: log.info("Stopped"))
        return d

    def _stop_failed(self, failure: Failure, child: IService) -> None:
        # logged, and the next service stops all the same (the files must be closed)
        log.failure("Stopping {service} failed", failure=failure,
                    service=type(child).__name__.lstrip("_"))
