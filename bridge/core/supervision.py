"""When the supervisor restarts a worker process that ended, and when it gives up.

Sans-IO: the supervisor (``bridge.supervisor``) tells ``WorkerPolicy`` what
happened to each worker (spawned, started, ended) with the time, and does what
the answer says. Kept apart from the processes so the backoff is tested with a
made-up clock.

* A worker that ends after it had started is restarted after a delay that
  doubles from ``min_delay`` to ``max_delay`` with each crash (``core/backoff.py``); once a worker
  has run ``stable_after`` seconds its next crash starts from ``min_delay``
  again. Its outbox is replayed when it starts again.
* A worker that ends before it started is failing at start-up: if it refused
  to start (exit status 2: its one-line ``StartupError``, a port in use or a
  file it cannot open) a restart will not help, so the supervisor gives up at
  once with that line; any other early end (a crash) is retried with the same
  backoff up to ``start_attempts`` times in a row, then the supervisor gives
  up with the worker's last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

from . import backoff

REFUSED = 2  # exit status of a process that refused to start (bridge/tap.py)


@dataclass(frozen=True)
class Restart:
    worker: int
    delay: float  # seconds from now


@dataclass(frozen=True)
class GiveUp:
    worker: int
    reason: str  # one line for the operator


Decision = Union[Restart, GiveUp]


@dataclass
class _Worker:
    started_at: Optional[float] = None  # None: spawned, not started yet
    crashes: int = 0  # ends in a row, for the backoff
    start_failures: int = 0  # ends before starting, in a row
    restarts: int = 0


class WorkerPolicy:
    def __init__(self, workers: int, min_delay: float = 1.0, max_delay: float = 30.0,
                 stable_after: float = 60.0, start_attempts: int = 3):
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.start_attempts = start_attempts
        self.workers: Dict[int, _Worker] = {n: _Worker() for n in range(1, workers + 1)}

    def spawned(self, worker: int) -> None:
        self.workers[worker].started_at = None

    def started(self, worker: int, now: float) -> None:
        state = self.workers[worker]
        state.started_at = now
        state.start_failures = 0

    def is_started(self, worker: int) -> bool:
        return self.workers[worker].started_at is not None

    def restarts(self, worker: int) -> int:
        return self.workers[worker].restarts

    def ended(self, worker: int, now: float, status: Optional[int], reason: str) -> Decision:
        """Worker ``worker`` ended (``status``: its exit status, None if a signal ended it)
        for ``reason``: restart it after a delay, or give up."""
        state = self.workers[worker]
        if state.started_at is None:
            state.start_failures += 1
            if status == REFUSED:
                return GiveUp(worker, reason)
            if state.start_failures >= self.start_attempts:
                return GiveUp(worker, "%s (failed %d times in a row at start-up)"
                              % (reason, state.start_failures))
        elif now - state.started_at >= self.stable_after:
            state.crashes = 0
        state.started_at = None
        state.crashes += 1
        state.restarts += 1
        return Restart(worker, backoff.delay(state.crashes - 1, self.min_delay,
                                             self.max_delay))
