"""Log level for the bridge's own loggers (twistd itself prints every level).

Every bridge module takes its ``Logger`` from ``logger()``; the level set by
``set_level`` (from ``log_level`` in the config) filters them all. Stable
field names used in events: ``peer``, ``device``, ``mid``, ``topic``,
``code``, ``reason``; tokens only ever appear through ``registry.mask``.

With ``log_format: json`` (``LOG_FORMAT=json``) ``json_observer`` writes each
event as one JSON object per line (``event_as_json_line``), for log shippers;
``tap.py`` gives it to twistd in place of its text lines.

A worker process of a supervised bridge (``coap.workers`` > 1) writes its
events to the supervisor instead, as Twisted's own JSON serialisation
(``eventAsJSON``, one event a line, ``worker_observer``); the supervisor
publishes each again (``relay_line``) with the ``worker`` field set, so its log
(text or JSON) holds every worker's lines, each naming its worker: in text as
``[namespace#level worker=N]``, in JSON as ``"worker": N``.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timezone
from typing import IO, Any, Dict

from constantly import NamedConstant
from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogObserver, LogLevel,
                            LogLevelFilterPredicate, Logger, eventAsJSON, eventFromJSON,
                            formatEvent, globalLogPublisher)

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


def set_level(level: str) -> None:
    global _debugging
    _predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.levelWithName(level))
    _debugging = LogLevel.levelWithName(level) is LogLevel.debug


# -- LOG_FORMAT=json -----------------------------------------------------------------------

# keys of an event that are its machinery, not its fields (log_* are dropped as well)
_NOT_FIELDS = frozenset(("message", "format", "isError", "system", "time", "why", "failure"))


def event_as_json_line(event: Dict[str, Any]) -> str:
    """One log event as one line of JSON: ``time`` (RFC 3339, UTC), ``level``,
    ``namespace``, ``text`` (the formatted message), ``traceback`` for a failure, then
    the event's own fields (``peer``, ``device``, ``topic``...). A value JSON cannot
    hold is written as its ``str``."""
    level = event.get("log_level")
    record: Dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0.0, timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if isinstance(level, NamedConstant) else "info",
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in _NOT_FIELDS and key not in record:
            record[key] = value
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def json_observer(stream: IO[str]) -> FileLogObserver:
    """A log observer writing ``event_as_json_line`` of each event to ``stream``."""
    return FileLogObserver(stream, event_as_json_line)


# -- worker processes ----------------------------------------------------------------------

def worker_observer(stream: IO[str], worker: int) -> FileLogObserver:
    """A worker's log observer: each event, with ``worker``, as one line of Twisted's JSON."""
    return FileLogObserver(stream, lambda event: _worker_json(event, worker))


def _worker_json(event: Dict[str, Any], worker: int) -> str:
    event = dict(event, worker=worker)
    failure = event.get("log_failure")
    if failure is not None:
        # Twisted's JSON keeps a failure's traceback but not its exception (unpersistable):
        # the exception's text goes in its place
        failure = copy.copy(failure)
        failure.value = str(failure.value)
        event["log_failure"] = failure
    return eventAsJSON(event) + "\n"


def relay_line(line: str, worker: int, publish: ILogObserver = globalLogPublisher) -> Dict[str, Any]:
    """Publish one line a worker wrote (``worker_observer``'s, or any other text it printed)
    as a log event of this process naming ``worker``; return the event."""
    try:
        event = eventFromJSON(line)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {"log_format": "{line}", "line": line, "log_level": LogLevel.info,
                 "log_time": time.time(),
                 "log_namespace": NAMESPACE + ".worker"}
    event["worker"] = worker
    level = event.get("log_level")
    event["log_system"] = "%s#%s worker=%d" % (
        event.get("log_namespace", "-"), level.name if isinstance(level, NamedConstant)
        else "-", worker)
    publish(event)
    return event
