"""``coap.workers`` > 1: the supervisor that runs the worker processes of one host.

``twistd -n coapbridge`` with ``COAP_WORKERS=N`` becomes this service: it
opens no CoAP port and no MQTT connection. Once the configuration has been
checked (by ``tap.py``, before anything starts) it looks that the CoAP port is
free, holds DATA_DIR for its workers (``bridge.edge.data_dir``: no other bridge,
of any worker count, may start on it), opens the metrics port, and starts N workers: the
same twistd plugin with ``COAPBRIDGE_WORKER=1..N`` in the environment (``bridge.tap``).
The supervisor binds the N sockets of the CoAP port (and of the CoAPs port) itself, with
``SO_REUSEPORT``, and hands socket k to worker k (``bridge.edge.udp.SocketGroup``): the
kernel's reuse-port group then never changes when a worker dies and comes back, so no
device moves to another worker. The RFC 8323 listeners' TCP ports (``reliable.*``) it
binds too, one listening socket each, handed to every worker, which all accept from it
(``bridge.edge.shared_tcp``): a worker's restart ends only its own connections. Each worker has its own MQTT client id and outbox file,
and shares the registry (SQLite in WAL mode).

* A worker's log events come to the supervisor as JSON lines on its standard
  output and are logged here with ``worker`` (``bridge.logwriter.relay_line``); its
  standard error (a refusal's one line, a traceback) is logged as warnings.
* A worker that ends is restarted with backoff, or the supervisor gives up:
  ``bridge.core.supervision.WorkerPolicy`` decides. Giving up stops the other
  workers and ends the program with the worker's one line and exit status 2.
* Stopping (SIGTERM, SIGINT) sends SIGTERM to every worker and waits for each
  to finish its own orderly stop (answer what it stored, wait for the last
  PUBACKs, close its files); a worker still running after ``STOP_TIMEOUT`` is
  killed with an error line (its outbox is replayed at the next start).
* The metrics port serves all workers (``bridge.edge.worker_metrics``).
* A worker watches its standard input, the supervisor's end of a pipe: if the
  supervisor is gone (killed), the worker stops (``ParentWatch``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import abstract, defer, endpoints, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver
from twisted.python.failure import Failure

from . import logwriter
from .settings import Config, StartupError
from .core.supervision import GiveUp, WorkerPolicy
from .edge import shared_tcp, stream_listen, udp
from .edge.data_dir import DataDirLock
from .logs import logger

log = logger("supervisor")

WORKER_ENV = "COAPBRIDGE_WORKER"  # 1..N in a worker's environment
STOP_TIMEOUT = 30.0  # s a worker has to stop after SIGTERM before it is killed
WORKER_MAIN = "from twisted.scripts.twistd import run; run()"


def worker_command(config_path: Optional[str]) -> List[str]:
    """The argument list of a worker process: twistd with the same plugin and file."""
    args = [sys.executable, "-c", WORKER_MAIN, "-n", "--pidfile=", "coapbridge"]
    return args + (["--config", os.path.abspath(config_path)] if config_path else [])


class WorkerProcess(ProcessProtocol):
    """One worker: its output lines to the log, its start and its end to the supervisor."""

    def __init__(self, supervisor: "SupervisorService", worker: int):
        self.supervisor = supervisor
        self.worker = worker
        self.metrics_port: Optional[int] = None  # set when it says it started
        self.errors: Deque[str] = deque(maxlen=50)  # its last lines on standard error
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out = self._lines(self._out + data, self._event)

    def errReceived(self, data: bytes) -> None:
        self._err = self._lines(self._err + data, self._error_line)

    @staticmethod
    def _lines(buffer: bytes, each: Callable[[str], None]) -> bytes:
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                each(line.decode("utf-8", "replace"))
        return rest

    def _event(self, line: str) -> None:
        event = logwriter.relay_line(line, self.worker)
        if event.get("worker_event") == "started":
            self.metrics_port = event.get("metrics_port") or None
            self.supervisor.started(self.worker)

    def _error_line(self, line: str) -> None:
        self.errors.append(line.rstrip())
        log.warn("{line}", line=line, worker=self.worker)

    def last_error(self) -> str:
        """What it said last on standard error, as one line: from its last ``coapbridge:``
        line on (a refusal, or a configuration's problems), else its last line."""
        lines = list(self.errors)
        starts = [n for n, line in enumerate(lines) if line.startswith("coapbridge: ")]
        chosen = lines[starts[-1]:] if starts else lines[-1:]
        return " ".join(line.strip() for line in chosen)

    def processEnded(self, reason: Failure) -> None:
        for buffer, each in ((self._out, self._event), (self._err, self._error_line)):
            if buffer.strip():
                each(buffer.decode("utf-8", "replace"))
        self._out = self._err = b""
        value = reason.value
        status = getattr(value, "exitCode", None)
        signal_number = getattr(value, "signal", None)
        self.supervisor.ended(self.worker, status if signal_number is None else None,
                              signal_number)


class SupervisorService(Service):
    """Starts ``coap.workers`` workers, restarts them, stops them, serves their metrics.

    ``command`` is a worker's argument list (``worker_command``), started with
    ``reactor.spawnProcess`` in the supervisor's environment (or ``env``) plus
    ``COAPBRIDGE_WORKER``; ``refuse(line)`` ends the program with a start-up problem
    (``tap.py``); ``failure`` holds the line when the supervisor gave up, for ``tap.py`` to
    exit with it."""

    def __init__(self, config: Config, reactor: Any, command: List[str],
                 refuse: Optional[Callable[[str], None]] = None,
                 log_observer: Optional[ILogObserver] = None,
                 env: Optional[Dict[str, str]] = None):
        self.config = config
        self.reactor = reactor
        self.command = command
        self.refuse = refuse
        self.log_observer = log_observer
        self.env = dict(os.environ if env is None else env)
        self.policy = WorkerPolicy(config.coap.workers)
        self.processes: Dict[int, WorkerProcess] = {}  # running (or starting) workers
        self.pending: Dict[int, Any] = {}  # worker -> its delayed restart
        self.transports: Dict[int, Any] = {}
        self.failure: Optional[str] = None
        self.stopping = False
        self._stopped: Optional[defer.Deferred] = None
        self.metrics_port: Any = None  # its StreamServerEndpointService, while listening
        self.groups: Dict[str, udp.SocketGroup] = {}  # "coap", "dtls": the workers' sockets
        self.listening: Dict[str, Any] = {}  # "tcp", "tls", ...: one socket for all workers
        self.data_dir = DataDirLock(config.data_dir)  # held for the workers while they run
        from .edge.worker_metrics import WorkerMetrics
        self.metrics = WorkerMetrics(reactor, self.worker_ports, self.policy.restarts,
                                     config.metrics.idle_timeout)

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None:
            parent.setComponent(ILogObserver, self.log_observer)
        return Service.setServiceParent(self, parent)

    def worker_ports(self) -> Dict[int, Optional[int]]:
        return {n: (self.processes[n].metrics_port if n in self.processes
                    and self.policy.is_started(n) else None)
                for n in self.policy.workers}

    # -- starting ------------------------------------------------------------------------

    def startService(self) -> None:
        try:
            self._check_ports()
            self._bind_groups()
            self.data_dir.acquire(self.config.coap.workers)
            self._listen_metrics()
        except StartupError as exc:
            self._close_groups()
            self.data_dir.release()
            if self.refuse is None:
                raise
            self.refuse(str(exc))
            return
        Service.startService(self)
        log.info("Starting {count:plural:worker process:worker processes} on UDP port {port}",
                 count=self.config.coap.workers, port=self.config.coap.bind_port)
        for worker in self.policy.workers:
            self.spawn(worker)

    def _check_ports(self) -> None:
        from .listeners import cannot_listen
        cfg = self.config.coap
        try:
            udp.port_free(cfg.bind_port, cfg.bind_address)
        except error.CannotListenError as exc:
            raise StartupError(cannot_listen("CoAP", "UDP", exc, "coap.bind_port"))
        dtls = self.config.dtls
        if dtls.enabled:
            try:
                udp.port_free(dtls.bind_port, dtls.bind_address or cfg.bind_address)
            except error.CannotListenError as exc:
                raise StartupError(cannot_listen("CoAPs", "UDP", exc, "dtls.bind_port"))

    def _bind_groups(self) -> None:
        """The workers' sockets, bound in order and held here for as long as we run."""
        from .listeners import cannot_listen
        cfg, dtls = self.config.coap, self.config.dtls
        ports = [("coap", "CoAP", cfg.bind_port, cfg.bind_address, "coap.bind_port")]
        if dtls.enabled:
            ports.append(("dtls", "CoAPs", dtls.bind_port,
                          dtls.bind_address or cfg.bind_address, "dtls.bind_port"))
        for name, what, port, interface, key in ports:
            try:
                self.groups[name] = udp.SocketGroup(port, interface, cfg.workers)
            except error.CannotListenError as exc:
                raise StartupError(cannot_listen(what, "UDP", exc, key))
        self._bind_listeners()

    def _bind_listeners(self) -> None:
        """The RFC 8323 listeners' sockets, listening here for as long as we run."""
        from .edge.reliable_service import LISTENERS
        from .listeners import cannot_listen
        from .settings.reliable import enabled
        for name in enabled(self.config):
            scheme, _, _, env = LISTENERS[name]
            listener = getattr(self.config.reliable, name)
            try:
                self.listening[name] = shared_tcp.bind_listening(
                    listener.bind_port, listener.bind_address or self.config.coap.bind_address)
            except error.CannotListenError as exc:
                raise StartupError(cannot_listen(scheme, "TCP", exc,
                                                  "reliable.%s.bind_port" % name, ", " + env))

    def _close_groups(self) -> None:
        for group in self.groups.values():
            group.close()
        self.groups.clear()
        for sock in self.listening.values():
            sock.close()
        self.listening.clear()

    def _listen_metrics(self) -> None:
        from .edge.worker_metrics import SupervisorSite
        from .listeners import cannot_listen
        cfg = self.config.metrics
        if not cfg.port:
            return
        try:
            site = SupervisorSite(self.metrics, idle_timeout=cfg.idle_timeout,
                                  max_connections=cfg.max_connections)
            kind = endpoints.TCP6ServerEndpoint if ":" in cfg.bind_address else \
                endpoints.TCP4ServerEndpoint
            self.metrics_port = stream_listen.listening(
                kind(self.reactor, cfg.port, interface=cfg.bind_address), site,
                lambda port: log.info(
                    "Metrics of all workers on http://{host}:{port}/metrics (probes: "
                    "/healthz, /readyz)", host=cfg.bind_address, port=port.getHost().port))
        except error.CannotListenError as exc:
            raise StartupError(cannot_listen("metrics", "TCP", exc, "metrics.port",
                                              ", 0: off"))

    def spawn(self, worker: int) -> None:
        self.pending.pop(worker, None)
        if self.stopping:
            return
        process = WorkerProcess(self, worker)
        self.processes[worker] = process
        self.policy.spawned(worker)
        inherited = set(udp.FD_ENV.values()) | set(shared_tcp.FD_ENV.values())
        env = {k: v for k, v in self.env.items() if k not in inherited}
        env[WORKER_ENV] = str(worker)
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for name, group in self.groups.items():  # its socket of each group, on a fixed fd
            fd = udp.COAP_FD if name == "coap" else udp.DTLS_FD
            child_fds[fd] = group.fileno(worker)
            env[udp.FD_ENV[name]] = str(fd)
        for name, sock in self.listening.items():  # the same listening socket for each
            child_fds[shared_tcp.FDS[name]] = sock.fileno()
            env[shared_tcp.FD_ENV[name]] = str(shared_tcp.FDS[name])
        self.transports[worker] = self.reactor.spawnProcess(
            process, self.command[0], self.command, env=env, path=os.getcwd(),
            childFDs=child_fds)

    def started(self, worker: int) -> None:
        self.policy.started(worker, self.reactor.seconds())
        if all(self.policy.is_started(n) for n in self.policy.workers):
            log.info("All {count:plural:worker} started", count=len(self.policy.workers))

    # -- ending --------------------------------------------------------------------------

    def ended(self, worker: int, status: Optional[int], signal_number: Optional[int]) -> None:
        process = self.processes.pop(worker, None)
        self.transports.pop(worker, None)
        how = ("killed by signal %d" % signal_number if signal_number is not None
               else "exit status %s" % status)
        if self.stopping:
            # a worker ends by the signal that stopped it: ours, or the group's Ctrl-C
            if signal_number not in (None, signal.SIGTERM, signal.SIGINT) \
                    or status not in (None, 0):
                log.warn("Worker {worker} stopped: {how}", worker=worker, how=how)
            if not self.processes and self._stopped is not None and not self._stopped.called:
                self._stopped.callback(None)
            return
        reason = ((process.last_error() if process is not None else "")
                  or "worker %d ended (%s)" % (worker, how))
        decision = self.policy.ended(worker, self.reactor.seconds(), status, reason)
        if isinstance(decision, GiveUp):
            self.give_up(decision)
            return
        log.error("Worker {worker} ended ({how}); restarting it in {delay} s (its outbox is "
                  "delivered when it starts)", worker=worker, how=how, delay=decision.delay)
        self.pending[worker] = self.reactor.callLater(decision.delay, self.spawn, worker)

    def give_up(self, decision: GiveUp) -> None:
        line = decision.reason
        if line.startswith("coapbridge: "):
            line = line[len("coapbridge: "):]
        self.failure = "worker %d cannot start: %s" % (decision.worker, line)
        log.error("{failure}; stopping the other workers", failure=self.failure,
                  worker=decision.worker)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> defer.Deferred:
        Service.stopService(self)
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        d = self._stop_workers()
        d.addCallback(lambda _: self._close_groups())
        d.addCallback(lambda _: self.data_dir.release())
        d.addCallback(lambda _: self._stop_metrics())
        d.addCallback(lambda _: log.info("Stopped"))
        return d

    def _stop_workers(self) -> defer.Deferred:
        self._stopped = defer.Deferred()
        if not self.processes:
            self._stopped.callback(None)
            return self._stopped
        log.info("Stopping {count:plural:worker}", count=len(self.processes))
        for worker in list(self.transports):
            self._signal(worker, "TERM")
        timer = self.reactor.callLater(STOP_TIMEOUT, self._kill_remaining)
        self._stopped.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return self._stopped

    def _kill_remaining(self) -> None:
        for worker in list(self.transports):
            log.error("Worker {worker} did not stop within {seconds} s: killed (its outbox is "
                      "delivered at the next start)", worker=worker, seconds=STOP_TIMEOUT)
            self._signal(worker, "KILL")

    def _signal(self, worker: int, name: str) -> None:
        try:
            self.transports[worker].signalProcess(name)
        except (error.ProcessExitedAlready, KeyError):
            pass

    def _stop_metrics(self) -> Any:
        self.metrics.close()
        if self.metrics_port is not None:
            listener, self.metrics_port = self.metrics_port, None
            return listener.stopService()  # its StreamServerEndpointService
        return None


class ParentWatch(abstract.FileDescriptor):
    """A worker's standard input: the supervisor holds the other end of the pipe, so
    end-of-file means the supervisor is gone; ``gone`` is then called (stop the worker)."""

    def __init__(self, reactor: Any, gone: Callable[[], None], fd: int = 0):
        abstract.FileDescriptor.__init__(self, reactor)
        self.fd = fd
        self.gone = gone
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return error.ConnectionDone()
        return None

    def connectionLost(self, reason: Failure) -> None:
        abstract.FileDescriptor.connectionLost(self, reason)
        if reason.check(error.ConnectionDone):  # end of file, not the reactor stopping
            self.gone()
