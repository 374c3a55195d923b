"""SIGTERM and SIGINT stop the bridge once: a second one while it stops is logged, not acted on.

Twisted's handlers call ``reactor.stop()`` for every signal, and a second call while the
reactor is already stopping raises ``ReactorNotRunning``, which the reactor logs as a
critical unhandled error. Second signals are common: a signal to the whole process
group (Ctrl-C in a terminal, ``timeout``, ``kill -- -PGID``) or to the whole control
group (systemd's default ``KillMode=control-group``) reaches a supervisor's workers
directly, and the supervisor then passes its own SIGTERM on to each of them; an
impatient operator presses Ctrl-C twice. So once the reactor runs, each of Twisted's
handlers is wrapped: the first signal goes to it (the orderly stop, and twistd's exit
by that signal afterwards); any later one, or one after something else began the
stop, is logged at info and ignored. The stop itself is bounded (the drain's
``DRAIN_TIMEOUT``, the registry's deadlines, the supervisor's ``STOP_TIMEOUT``), so
nothing needs a second signal to end; SIGKILL remains for whoever will not wait.
"""

from __future__ import annotations

import signal
from typing import Any, Dict

from .logs import logger

log = logger("bridge")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_once(reactor: Any) -> None:
    """Wrap the reactor's SIGTERM and SIGINT handlers once it runs (see the docstring)."""
    state: Dict[str, bool] = {"stopping": False}

    def stopping() -> None:
        state["stopping"] = True

    def install() -> None:
        for number in SIGNALS:
            previous = signal.getsignal(number)
            if callable(previous):
                signal.signal(number, _once(previous, state))
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.addSystemEventTrigger("after", "startup", install)


def _once(previous: Any, state: Dict[str, bool]) -> Any:
    def handler(number: int, frame: Any) -> None:
        if state["stopping"]:
            log.info("Received {signal} while stopping: the stop in progress goes on",
                     signal=signal.Signals(number).name)
            return
        state["stopping"] = True
        previous(number, frame)
    return handler
