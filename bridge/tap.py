"""twistd entry point: ``twistd -n coapbridge --config conf/coapbridge.yaml``.

The composition root: the only module that picks the global reactor. The
configuration is loaded and checked in ``postOptions``, so a bad file stops
the program with every problem listed before any socket opens. A problem
found while starting (a port in use, DATA_DIR not writable, a damaged file)
ends it the same way: one line on standard error, exit status 2.

Without ``-n`` twistd forks before the services start and its waiting parent, which
holds the terminal, prints only the first 100 bytes the daemon sends through its
status pipe (``An error has occurred: b'coapbridge: ... stop the pro'``). So the
daemon keeps a copy of the original standard error until it runs, writes the whole
line there (and to its log), and sends the parent a short text that fits.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, Optional

from twisted.python import usage

from . import logs, logwriter, startup_checks
from .settings import ConfigError, default_path


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Run the coapbridge CoAP-to-MQTT gateway. Every setting may also come from "
                "the environment (`coapbridge config env` lists the variables). Without "
                "--config, $COAPBRIDGE_CONFIG or ./conf/coapbridge.yaml is used when present.")
    optParameters = [
        ["config", "c", None, "YAML configuration file"],
    ]
    operator_stderr: Optional[int] = None  # daemonized: the terminal's, until running

    def opt_version(self) -> None:
        """Print coapbridge's version and exit."""
        from . import __version__
        print("coapbridge %s" % __version__)
        raise SystemExit(0)

    def postOptions(self) -> None:
        path = self["config"] or default_path()
        self.config_path = path
        try:
            self.config = startup_checks.load(path)
        except ConfigError as exc:
            # Not usage.UsageError: twistd answers that with its whole --help text and exit
            # status 1; a configuration problem is every problem listed and exit status 2.
            sys.stderr.write("coapbridge: " + exc.render() + "\n")
            raise SystemExit(2)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from . import runtime, signals

    logs.set_level(options.config.log_level)
    signals.stop_once(reactor)  # a second SIGTERM/SIGINT while stopping is ignored
    _keep_stderr(options, reactor)
    if runtime.tune_gc():
        # once the services have started (the registry is open): see bridge/runtime.py
        reactor.callWhenRunning(runtime.freeze_startup_objects)
    worker = _worker_number(options)
    if worker:
        return _worker(options, reactor, worker)
    # every line the process writes, text or JSON, at log_level (Twisted's too)
    observer = logwriter.process_observer(_log_stream(options), options.config.log_format,
                                          options.config.log_level)
    if options.config.coap.workers > 1:
        return _supervisor(options, reactor, observer)
    from .service import BridgeService
    return BridgeService(options.config, reactor, refuse=lambda text: _refuse(options, text),
                         log_observer=observer)


def _worker_number(options: Options) -> int:
    """``COAPBRIDGE_WORKER`` (set by the supervisor): 1..coap.workers, else 0."""
    from .supervisor import WORKER_ENV
    text = os.environ.get(WORKER_ENV, "")
    if not text:
        return 0
    workers = options.config.coap.workers
    if not text.isdigit() or not 1 <= int(text) <= workers or workers < 2:
        _refuse(options, "%s=%s: only the supervisor sets it, to 1..coap.workers (%d); unset "
                "it" % (WORKER_ENV, text, workers))
    return int(text)


def _worker(options: Options, reactor: Any, worker: int) -> Any:
    """One worker of a supervised bridge: its log events go to the supervisor as JSON lines
    on standard output; it stops when the supervisor is gone (its standard input closes)."""
    from .edge import shared_tcp, udp
    from .service import BridgeService
    from .supervisor import ParentWatch

    def gone() -> None:
        logs.logger("supervisor").error("The supervisor is gone: stopping worker {worker}",
                                        worker=worker)
        if reactor.running:
            reactor.stop()
    reactor.callWhenRunning(lambda: ParentWatch(reactor, gone).startReading())
    return BridgeService(options.config, reactor, refuse=lambda text: _refuse(options, text),
                         log_observer=logwriter.worker_observer(
                             sys.stdout, worker, options.config.log_level), worker=worker,
                         sockets={**udp.inherited(os.environ),
                                  **shared_tcp.inherited(os.environ)})


def _supervisor(options: Options, reactor: Any, observer: Any) -> Any:
    from .supervisor import SupervisorService, worker_command
    service = SupervisorService(options.config, reactor, worker_command(options.config_path),
                                refuse=lambda text: _refuse(options, text),
                                log_observer=observer)

    def after_shutdown() -> None:
        if service.failure is not None:  # it gave up on a worker: that line, exit status 2
            sys.stdout.flush()
            stream = sys.__stderr__ or sys.stderr
            stream.write("coapbridge: " + service.failure + "\n")
            stream.flush()
            _remove_pidfile(options)
            os._exit(2)  # twistd would exit 0 once the reactor has stopped
    reactor.addSystemEventTrigger("after", "shutdown", after_shutdown)
    return service


def _log_stream(options: Options) -> Any:
    """Where twistd would write its log: standard output with ``-n`` (or ``--logfile=-``),
    else ``--logfile`` (default ``twistd.log``), as a rotating file as twistd makes it."""
    parent: Any = options.parent if options.parent is not None else {}
    path = parent.get("logfile")
    if path == "-" or (not path and parent.get("nodaemon", True)):
        return sys.stdout
    from twisted.python import logfile
    return logfile.LogFile.fromFullPath(path or "twistd.log")


STATUS_LIMIT = 100  # bytes twistd's waiting parent reads from the status pipe
SEE_ABOVE = "coapbridge did not start: see the line above (and the log)"


def _keep_stderr(options: Options, reactor: Any) -> None:
    """twistd without ``-n``: keep the terminal's standard error (twistd points the
    daemon's at /dev/null) for a refusal's line, until the reactor runs."""
    parent: Any = options.parent if options.parent is not None else {}
    if parent.get("nodaemon", True):
        return
    options.operator_stderr = os.dup(2)

    def close() -> None:
        fd, options.operator_stderr = options.operator_stderr, None
        if fd is not None:
            os.close(fd)
    reactor.callWhenRunning(close)


def _refuse(options: Options, text: str) -> NoReturn:
    """Stop twistd with one line and exit status 2, as for a configuration error.

    twistd's own logging holds ``sys.stderr`` by now, so the line goes to the original
    standard error; once daemonized to the terminal's standard error kept for it (see
    the module's docstring) and to the log, and the parent that waits for the start gets
    a short text (it prints it, exits 1); the PID file twistd wrote is removed, since
    twistd does not get to do it."""
    line = "coapbridge: " + text
    parent: Any = options.parent if options.parent is not None else {}  # twistd's options
    pipe = parent.get("statusPipe")
    if pipe is not None:
        logs.logger("bridge").error("{line}", line=line)
        status = line
        fd = getattr(options, "operator_stderr", None)
        if fd is not None:
            try:
                os.write(fd, (line + "\n").encode("utf-8", "replace"))
                status = SEE_ABOVE
            except OSError:
                pass  # the terminal is gone: the parent gets what fits
        os.write(pipe, ("1 " + status).encode("utf-8", "replace")[:STATUS_LIMIT])
    else:
        stream = sys.__stderr__ or sys.stderr
        stream.write(line + "\n")
        stream.flush()
    _remove_pidfile(options)
    raise SystemExit(2)


def _remove_pidfile(options: Options) -> None:
    parent: Any = options.parent if options.parent is not None else {}
    pidfile = parent.get("pidfile")
    if pidfile and os.path.exists(pidfile):
        os.remove(pidfile)
