"""Log level for the bridge's own loggers (twistd itself prints every level).

Every bridge module takes its ``Logger`` from ``logger()``; the level set by
``set_level`` (from ``log_level`` in the config) filters them all. Stable
field names used in events: ``peer``, ``device``, ``mid``, ``topic``,
``code``, ``reason``; tokens only ever appear through ``registry.mask``.
"""

from __future__ import annotations

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger,
                            globalLogPublisher)

NAMESPACE = "coapbridge"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(name: str) -> Logger:
    return Logger(namespace="%s.%s" % (NAMESPACE, name), observer=_observer)


def set_level(level: str) -> None:
    _predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.levelWithName(level))
