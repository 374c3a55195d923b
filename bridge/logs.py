"""The bridge's loggers and their level.

Every bridge module takes its ``Logger`` from ``logger()``; the level set by
``set_level`` (from ``log_level`` in the config) filters them all at the source,
so a debug line costs nothing at info. Stable field names used in events:
``peer``, ``device``, ``mid``, ``topic``, ``code``, ``reason``, ``count``; tokens
only ever appear through ``registry.mask``. A count's noun goes in the format,
``{count:plural:device}`` (``bridge.logwriter``), not in a field of its own.

What the process writes (every event at ``log_level``, Twisted's too, as text or
JSON lines, and a worker's events to its supervisor) is ``bridge.logwriter``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger, \
    globalLogPublisher

NAMESPACE = "coapbridge"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


_debugging = False  # set_level's level is debug


class _Logger(Logger):
    """A ``Logger`` whose ``debug`` returns at once unless ``set_level`` asked for debug:
    Twisted builds the event and runs the filter for every call (about 20 µs), which the
    per-datagram debug lines would pay for nothing at the default level. What passes is
    unchanged: the filter still decides."""

    def debug(self, format: Any = None, **kwargs: Any) -> None:
        if _debugging:
            Logger.debug(self, format, **kwargs)


def logger(name: str) -> Logger:
    return _Logger(namespace="%s.%s" % (NAMESPACE, name), observer=_observer)


def unfiltered_logger(name: str) -> Logger:
    """A logger whose events pass whatever ``log_level`` says: for the few events another
    process acts on (a worker telling its supervisor that it started)."""
    return Logger(namespace="%s.%s" % (NAMESPACE, name), observer=globalLogPublisher)


def debugging() -> bool:
    """Whether debug lines pass (``log_level: debug``): a caller whose debug line costs
    something to build (a credential described, a peer printed) asks first."""
    return _debugging


# log_level's accepted names, in any case: Twisted's and Python logging's
LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical,
          "fatal": LogLevel.critical}


def level_named(name: str) -> Optional[LogLevel]:
    """The level ``name`` names (``warning``, ``WARN``, ``Error``...), or None."""
    return LEVELS.get(str(name).strip().lower())


def twisted_level(name: str) -> LogLevel:
    level = level_named(name)
    if level is None:
        raise ValueError("unknown log level %r (known: %s)" % (name, ", ".join(LEVELS)))
    return level


def set_level(name: str) -> None:
    global _debugging
    level = twisted_level(name)
    _predicate.setLogLevelForNamespace(NAMESPACE, level)
    _debugging = level is LogLevel.debug
