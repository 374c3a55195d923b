"""What the process writes to its log: every event, the bridge's and Twisted's, at ``log_level``.

twistd is given this module's observer (``process_observer``) as the
application's ``ILogObserver``, in text and in JSON alike, so ``log_level``
governs every line the process writes, Twisted's own included:

* Twisted's routine port lines (``Starting protocol <...>``, ``MetricsSite starting on
  9683``, ``(UDP Port 5683 Closed)``...) are debug lines, not info; its legacy
  ``log.msg`` lines are named ``twisted`` (not ``log_legacy``), and a Python warning
  they carry is a warning.
* A message is formatted here (``format_message``), not by ``twisted.logger``: a count
  says its noun with the right plural in the format itself, ``{count:plural:device}``
  -> ``1 device`` / ``3 devices`` (``{n:plural:address:addresses}`` for an irregular
  one), so no event carries a helper field for it.
* Text lines keep twistd's shape, ``TIME [logger#level] message``; JSON lines
  (``log_format: json``) have a stable schema: ``time`` (RFC 3339, UTC), ``level``
  (``debug``, ``info``, ``warning``, ``error`` or ``critical``), ``logger``,
  ``message``, ``traceback`` for a failure, then the event's own fields.

A worker process of a supervised bridge writes its events to the supervisor
(``worker_observer``: Twisted's JSON serialisation, one event a line, the message
already formatted, at the worker's ``log_level``, with the few events the supervisor
acts on always); the supervisor publishes each again (``relay_line``) with ``worker``
set, and writes them with its own observer: ``[logger#level worker=N]`` in text,
``"worker": N`` in JSON.

Why our own and not twisted.logger's formatting: its flattening for JSON drops format
specifications (a relayed ``{seconds:.0f}`` came out as the whole float) and has no
plural; the text and JSON lines and the filter are a few lines each on top of
twisted.logger's ``FileLogObserver`` and its events.
"""

from __future__ import annotations

import copy
import json
import re
import string
import time
from datetime import datetime, timezone
from typing import IO, Any, Callable, Dict, Optional

from constantly import NamedConstant
from twisted.logger import (FileLogObserver, ILogObserver, LogLevel, eventAsJSON,
                            eventFromJSON, formatEvent, formatTime, globalLogPublisher)

from . import logs

# the names written for each level (JSON's "level"; the text line's "#level")
LEVEL_NAMES = {LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warning",
               LogLevel.error: "error", LogLevel.critical: "critical"}
# keys of an event that are its machinery, not its fields (log_* are dropped as well)
_NOT_FIELDS = frozenset(("message", "format", "isError", "system", "time", "why", "failure"))
# Twisted's lines about its own ports and protocols: debug, not info
_ROUTINE = re.compile(r"(Starting|Stopping) (protocol|factory) |\S+ starting on \d+$|"
                      r"\((UDP|TCP|Unix) Port \S+ Closed\)$")
TWISTED = "twisted"  # the logger of Twisted's legacy (log.msg) lines


class _Formatter(string.Formatter):
    """``str.format`` over an event's fields, with ``{count:plural:noun[:plural]}``."""

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        return kwargs[key]

    def format_field(self, value: Any, spec: str) -> str:
        if spec.startswith("plural:"):
            words = spec[len("plural:"):].split(":")
            noun = words[0] if value == 1 else (words[1] if len(words) > 1 else words[0] + "s")
            return "%s %s" % (value, noun)
        return format(value, spec)


_formatter = _Formatter()


def format_message(event: Dict[str, Any]) -> str:
    """The event's message: its format with its fields (Twisted's own formatting when ours
    cannot do it, e.g. a ``{call()}`` field)."""
    text = event.get("log_format")
    if text is None:
        return formatEvent(event)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return _formatter.vformat(text, (), event)
    except Exception:
        return formatEvent(event)


def normalised(event: Dict[str, Any]) -> Dict[str, Any]:
    """``event`` as this process writes it: a Twisted legacy line named ``twisted``, at
    debug when it is about Twisted's own ports, at warning when it is a Python warning
    (a copy when anything changes: other observers see the event as it was)."""
    if event.get("log_namespace") != "log_legacy":
        return event
    event = dict(event, log_namespace=TWISTED)
    if "warning" in event:
        event["log_level"] = LogLevel.warn
    elif event.get("log_level") is LogLevel.info and _ROUTINE.match(
            str(event.get("log_text", ""))):
        event["log_level"] = LogLevel.debug
    return event


def level_name(event: Dict[str, Any]) -> str:
    level = event.get("log_level")
    return LEVEL_NAMES.get(level, "info") if isinstance(level, NamedConstant) else "info"


def event_as_text_line(event: Dict[str, Any]) -> str:
    """twistd's classic line: ``TIME [logger#level] message``, a failure's traceback
    after it, continuation lines indented (a relayed worker's event names its worker)."""
    system = event.get("log_system")
    if not system or system == "-":
        system = "%s#%s" % (event.get("log_namespace", "-"), event_level_for_text(event))
    text = format_message(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = "%s\n%s" % (text, failure.getTraceback().rstrip("\n"))
    return "%s [%s] %s\n" % (formatTime(event.get("log_time")), system,
                             text.replace("\n", "\n\t"))


def event_level_for_text(event: Dict[str, Any]) -> str:
    """The level in a text line: twistd's own names (``warn``), as before."""
    level = event.get("log_level")
    return level.name if isinstance(level, NamedConstant) else "-"


def event_as_json_line(event: Dict[str, Any]) -> str:
    """One event as one line of JSON (the schema is in the module's docstring). A value
    JSON cannot hold is written as its ``str``."""
    record: Dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0.0, timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level_name(event),
        "logger": event.get("log_namespace", "-"),
        "message": format_message(event),
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


def text_observer(stream: IO[str]) -> FileLogObserver:
    return FileLogObserver(stream, event_as_text_line)


class LevelObserver:
    """Passes on (normalised) the events at ``level`` or above, and always those
    ``always`` accepts."""

    def __init__(self, observer: ILogObserver, level: str,
                 always: Callable[[Dict[str, Any]], bool] = lambda event: False):
        self.observer = observer
        self.level = logs.twisted_level(level)
        self.always = always

    def __call__(self, event: Dict[str, Any]) -> None:
        event = normalised(event)
        level = event.get("log_level")
        if (isinstance(level, NamedConstant) and level >= self.level) or self.always(event):
            self.observer(event)


def process_observer(stream: IO[str], log_format: str, level: str) -> LevelObserver:
    """The observer of this process's log (twistd's application observer): text or JSON
    lines on ``stream``, at ``level``."""
    writer = json_observer(stream) if log_format == "json" else text_observer(stream)
    return LevelObserver(writer, level)


# -- worker processes ----------------------------------------------------------------------

WORKER_EVENT = "worker_event"  # a field of the events a supervisor acts on


def worker_observer(stream: IO[str], worker: int, level: str = "debug") -> LevelObserver:
    """A worker's log observer: each event at ``level`` (and every ``worker_event``), with
    ``worker``, as one line of Twisted's JSON."""
    writer = FileLogObserver(stream, lambda event: _worker_json(event, worker))
    return LevelObserver(writer, level, lambda event: WORKER_EVENT in event)


def _worker_json(event: Dict[str, Any], worker: int) -> str:
    # the message formatted here, where the fields are whole (the supervisor's copy of a
    # field JSON cannot hold is only its text)
    event = dict(event, worker=worker, log_text=format_message(event), log_format="{log_text}")
    for key, value in event.items():
        if not key.startswith("log_") and not isinstance(value, (str, int, float, bool,
                                                                 type(None))):
            event[key] = str(value)
    failure = event.get("log_failure")
    if failure is not None:
        # Twisted's JSON keeps a failure's traceback but not its exception (unpersistable):
        # the exception's text goes in its place
        failure = copy.copy(failure)
        failure.value = str(failure.value)
        event["log_failure"] = failure
    return eventAsJSON(event) + "\n"


def relay_line(line: str, worker: int,
               publish: ILogObserver = globalLogPublisher) -> Dict[str, Any]:
    """Publish one line a worker wrote (``worker_observer``'s, or any other text it printed)
    as a log event of this process naming ``worker``; return the event."""
    try:
        event: Optional[Any] = eventFromJSON(line)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {"log_format": "{line}", "line": line, "log_level": LogLevel.info,
                 "log_time": time.time(), "log_namespace": logs.NAMESPACE + ".worker"}
    event["worker"] = worker
    event["log_system"] = "%s#%s worker=%d" % (event.get("log_namespace", "-"),
                                               event_level_for_text(event), worker)
    publish(event)
    return event
