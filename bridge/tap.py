"""twistd entry point: ``twistd -n coapbridge --config conf/coapbridge.yaml``.

The composition root: the only module that picks the global reactor. The
configuration is loaded and checked in ``postOptions``, so a bad file stops
the program with every problem listed before any socket opens.
"""

from __future__ import annotations

import sys
from typing import Any

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
    return BridgeService(options.config, reactor)
