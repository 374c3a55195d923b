"""twistd entry point: ``twistd -n coapbridge --config conf/coapbridge.yaml``.

The composition root: the only module that picks the global reactor. The
configuration is loaded and checked in ``postOptions``, so a bad file stops
the program with every problem listed before any socket opens. A problem
found while starting (a port in use, DATA_DIR not writable, a damaged file)
ends it the same way: one line on standard error, exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from twisted.python import usage

from . import config as config_module
from . import logs


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Run the coapbridge CoAP-to-MQTT gateway. Every setting may also come from "
                "the environment (see conf/coapbridge.yaml). Without --config, "
                "$COAPBRIDGE_CONFIG or ./conf/coapbridge.yaml is used when present.")
    optParameters = [
        ["config", "c", None, "YAML configuration file"],
    ]

    def postOptions(self) -> None:
        path = self["config"] or config_module.default_path()
        try:
            self.config = config_module.load(path)
        except config_module.ConfigError as exc:
            # Not usage.UsageError: twistd answers that with its whole --help text and exit
            # status 1; a configuration problem is every problem listed and exit status 2.
            sys.stderr.write("coapbridge: " + exc.render() + "\n")
            raise SystemExit(2)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from . import runtime
    from .service import BridgeService

    logs.set_level(options.config.log_level)
    if runtime.tune_gc():
        # once the services have started (the registry is open): see bridge/runtime.py
        reactor.callWhenRunning(runtime.freeze_startup_objects)
    # LOG_FORMAT=json: one JSON object per line on standard output, in place of twistd's text
    observer = logs.json_observer(sys.stdout) if options.config.log_format == "json" else None
    return BridgeService(options.config, reactor, refuse=lambda text: _refuse(options, text),
                         log_observer=observer)


def _refuse(options: Options, text: str) -> NoReturn:
    """Stop twistd with one line and exit status 2, as for a configuration error.

    twistd's own logging holds ``sys.stderr`` by now, so the line goes to the original
    standard error (or, once daemonized, to the parent that waits for the start); the
    PID file twistd wrote is removed, since twistd does not get to do it."""
    line = "coapbridge: " + text
    parent: Any = options.parent if options.parent is not None else {}  # twistd's options
    pipe = parent.get("statusPipe")
    if pipe is not None:
        os.write(pipe, ("1 " + line).encode("utf-8", "replace")[:100])
    else:
        stream = sys.__stderr__ or sys.stderr
        stream.write(line + "\n")
        stream.flush()
    pidfile = parent.get("pidfile")
    if pidfile and os.path.exists(pidfile):
        os.remove(pidfile)
    raise SystemExit(2)
