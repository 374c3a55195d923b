"""The service tree: the registry and the outbox, the package store, MQTT, the core's timer,
metrics, and CoAP last; stopped in reverse, each after the one before it has stopped.

``BridgeService`` is a ``MultiService`` of one child per resource; the runtime
glue they serve is ``bridge.glue.bridge.Bridge``. Only the composition root
(``tap.py``) picks the reactor.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .settings import Config, StartupError
from .edge import outbox_files, reliable_service, stream_listen
from .edge.data_dir import DataDirLock
from .edge.intake import Intake
from .edge.timer import repeating
from .settings.reliable import enabled as enabled_listeners
from .edge.outbox import Outbox
from .glue.bridge import Bridge
from .glue.commit import OutboxCommit
from .glue.lookup import RegistryView
from .glue.platform_changes import PlatformChanges
from .listeners import CoapService, DtlsService, cannot_listen
from .logs import logger, unfiltered_logger
from .registry import Registry

log = logger("bridge")

TICK_SECONDS = 0.25
DRAIN_TIMEOUT = 2.0  # s to wait for the last PUBACKs when stopping

__all__ = ["Bridge", "BridgeService", "cannot_listen"]


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

    def __init__(self, view: RegistryView, changes: PlatformChanges, reactor: Any,
                 config: Config, worker: int):
        self.view = view  # holds the registry while the service runs
        self.changes = changes
        self.reactor = reactor
        self.worker = worker
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
            registry = open_shared(self.target, self.pool_size, self.reactor,
                                   self.threadpool, self.changes)
            self.view.attach(registry)  # closed with it if the journal cannot open
            self._open_journal()
        else:
            registry = Registry(self.target.path)
        self.view.attach(registry)
        log.info("Device registry {registry}: {count:plural:device}", registry=self.target.display,
                 count=len(registry.entries()))
        if self.threadpool is not None:
            registry.start()  # the shared registry begins listening
        Service.startService(self)

    def _open_journal(self) -> None:
        from .edge.registry_journal import RegistryJournal
        journal = RegistryJournal(self.journal_path, self.synchronous)
        changes = self.changes
        changes.attach(journal, shared_file=bool(self.worker))  # before the registry listens
        if len(journal):
            log.info("Platform changes waiting for the registry in {path}: {count}",
                     count=len(journal), path=self.journal_path)

    def stopService(self) -> Any:
        Service.stopService(self)
        registry = self.view.registry
        if registry is not None and self.threadpool is not None:  # the shared registry
            self.view.attach(None)
            return registry.stop().addBoth(self._pool_stopped)
        self.close()
        return None

    def _pool_stopped(self, result: Any) -> Any:
        self.close()
        return result

    def close(self) -> None:
        registry = self.view.registry
        if registry is not None:
            self.view.attach(None)
            registry.close()
        journal = self.changes.detach()
        if journal is not None:
            journal.close()
        if self.threadpool is not None:
            pool, self.threadpool = self.threadpool, None
            pool.stop()


class _OutboxService(Service):
    """The outbox: opened (and locked for this process) and its backlog restored at start,
    after taking over the entries of outbox files no process owns any more (the single
    process or worker 1 does: see ``bridge.edge.outbox_files``); written and closed at stop."""

    def __init__(self, commit: OutboxCommit, config: Config, worker: int):
        self.commit = commit  # holds the outbox while the service runs
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
        self.commit.attach(outbox)
        if self.adopts:
            outbox_files.adopt_leftovers(outbox, self.data_dir, self.workers, self.synchronous)
        self.commit.restore()
        Service.startService(self)

    def stopService(self) -> None:
        Service.stopService(self)
        commit = self.commit
        if commit.outbox is not None:
            commit.stop()
            count, _ = commit.outbox.stats()
            if count:
                log.info("{count:plural:uplink} kept in the outbox for the next start", count=count)
        self.close()

    def close(self) -> None:
        outbox = self.commit.detach()
        if outbox is not None:
            outbox.close()
        if self.lock is not None:  # after SQLite's connection: see bridge/edge/outbox_files.py
            lock, self.lock = self.lock, None
            lock.release()


class _PackageService(Service):
    """The package cache directory; downloads in progress end when the service stops."""

    def __init__(self, packages: Any, sessions: Any):
        self.packages = packages
        self.sessions = sessions  # OTA downloads and upstream provisioning sessions

    def startService(self) -> None:
        packages = self.packages
        try:
            packages.start()
        except OSError as exc:
            raise StartupError("cannot use the package cache %s: %s; it must be a directory "
                               "this user can write" % (exc.filename or packages.directory,
                                                        exc.strerror or exc))
        Service.startService(self)

    def stopService(self) -> None:
        Service.stopService(self)
        self.sessions.stop()


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
    def __init__(self, tick: Callable[[], None], reactor: Any):
        self.loop = repeating(reactor, tick)

    def startService(self) -> None:
        Service.startService(self)
        self.loop.start(TICK_SECONDS, now=False).addErrback(
            lambda f: log.failure("Core timer stopped", failure=f))

    def stopService(self) -> None:
        Service.stopService(self)
        if self.loop.running:
            self.loop.stop()


class _MetricsService(Service):
    """``/metrics``, ``/healthz`` and ``/readyz`` (``metrics.port``; 0: off): a
    ``StreamServerEndpointService`` bound at start (``edge/stream_listen.py``), a port in
    use a ``StartupError`` before CoAP opens."""

    def __init__(self, bridge: Bridge):
        cfg = bridge.config.metrics
        self.cfg = cfg
        self.reactor = bridge.reactor
        self.site_parts = (bridge.prometheus.registry, bridge.readiness.check,
                           bridge.platform_changes.notes)
        # a worker's metrics are read by its supervisor, which serves metrics.port
        self.address = (0, "127.0.0.1") if bridge.worker else (cfg.port, cfg.bind_address)
        self.listener: Any = None  # its StreamServerEndpointService
        self.port: Any = None  # the listening port, once bound

    def startService(self) -> None:
        from .edge.metrics import MetricsSite
        cfg = self.cfg
        if cfg.port:
            registry, check, notes = self.site_parts
            site = MetricsSite(registry, check, cfg.idle_timeout, cfg.max_connections, notes)
            port, host = self.address
            kind = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
            try:
                self.listener = stream_listen.listening(
                    kind(self.reactor, port, interface=host), site, self._listening)
            except CannotListenError as exc:
                raise StartupError(cannot_listen("metrics", "TCP", exc, "metrics.port",
                                                  ", 0: off"))
        Service.startService(self)

    def _listening(self, port: Any) -> None:
        self.port = port
        log.info("Metrics on http://{host}:{port}/metrics (probes: /healthz, /readyz)",
                 host=self.address[1], port=port.getHost().port)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.listener is not None:
            listener, self.listener, self.port = self.listener, None, None
            return listener.stopService()
        return None


def transport_intake(bridge: Bridge) -> Intake:
    """What each transport service is built with, from the bridge's parts."""
    requests = bridge.requests
    return Intake(bridge.reactor, bridge.rng, requests.handle, bridge.notified,
                  bridge.peer_gone, bridge.transports, bridge.commit, bridge.registry_view,
                  requests.counts, bool(bridge.worker))


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
        self.bridge = bridge = Bridge(config, reactor, rng, worker)
        self._files: List[Any] = [] if worker else [_DataDirService(config.data_dir)]
        self._files += [_RegistryService(bridge.registry_view, bridge.platform_changes,
                                         reactor, config, worker),
                        _OutboxService(bridge.outbox_commit, config, worker)]
        self._metrics = _MetricsService(bridge)
        intake = transport_intake(bridge)
        children: List[IService] = self._files + [
            _PackageService(bridge.packages, bridge.sessions), _MqttService(bridge),
            _TickService(bridge.tick, reactor), self._metrics,
            CoapService(intake, config.coap, bridge.relations, bridge.notifications,
                        sockets.get("coap"))]
        if config.dtls.enabled:
            children.append(DtlsService(intake, config, bridge.core.observes,
                                        bridge.metrics.handshakes.record, worker <= 1,
                                        sockets.get("dtls")))
        if enabled_listeners(config):
            children.append(reliable_service.ReliableService(intake, config, cannot_listen,
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
