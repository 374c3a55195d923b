"""Log level for the bridge's own loggers (twistd itself prints every level).

Every bridge module takes its ``Logger`` from ``logger()``; the level set by
``set_level`` (from ``log_level`` in the config) filters them all. Stable
field names used in events: ``peer``, ``device``, ``mid``, ``topic``,
``code``, ``reason``; tokens only ever appear through ``registry.mask``.

With ``log_format: json`` (``LOG_FORMAT=json``) ``json_observer`` writes each
event as one JSON object per line (``event_as_json_line``), for log shippers;
``tap.py`` gives it to twistd in place of its text lines.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any, Dict

from constantly import NamedConstant
from twisted.logger import (FileLogObserver, FilteringLogObserver, LogLevel,
                            LogLevelFilterPredicate, Logger, formatEvent, globalLogPublisher)

NAMESPACE = "coapbridge"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(name: str) -> Logger:
    return Logger(namespace="%s.%s" % (NAMESPACE, name), observer=_observer)


def set_level(level: str) -> None:
    _predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.levelWithName(level))


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
