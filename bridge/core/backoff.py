"""Exponential backoff, the one helper for every retry of the bridge: pure, with the random
source injected.

The ``n``-th delay in a row (from 0) is ``low * 2**n``, at most ``high``; with ``rng``
it is jittered, uniform in [cap/2, cap], so that many clients that lost the same
server do not come back in step. A success resets the count. Used by the MQTT link
(``edge/mqtt_connect.py``: jittered, between ``mqtt.reconnect_min_delay`` and
``reconnect_max_delay``), the shared registry's reconnections
(``edge/shared_registry.py``: 0.5 s doubling to 30 s, no jitter: one connection) and the
supervisor's worker restarts (``core/supervision.py``: ``min_delay`` doubling to
``max_delay`` per crash in a row, no jitter: the log says the delay).

Twisted's ``twisted.application.internet.backoffPolicy`` makes the same curve but only
as a ``ClientService`` retry policy (a function of the failed attempts, with its own
global ``random`` unless one is passed), and none of the three is a ``ClientService``:
paho owns the MQTT socket once connected, psycopg the registry's, and a worker is a
process; this keeps the count beside the delay for all three.
"""

from __future__ import annotations

import random
from typing import Optional

MAX_DOUBLINGS = 30  # past this the cap is reached for any sane low/high: no huge powers


def delay(attempt: int, low: float, high: float,
          rng: Optional[random.Random] = None) -> float:
    """The delay before retry ``attempt`` (0: the first): ``low * 2**attempt`` capped at
    ``high``; uniform in [cap/2, cap] with ``rng``."""
    cap = min(high, low * (2 ** min(attempt, MAX_DOUBLINGS)))
    return cap if rng is None else rng.uniform(cap / 2, cap)


class Backoff:
    """The delays of failures in a row: ``next()`` gives one and counts it, ``reset()``
    after a success starts again from ``low``."""

    __slots__ = ("low", "high", "rng", "attempt")

    def __init__(self, low: float, high: float, rng: Optional[random.Random] = None):
        self.low = low
        self.high = high
        self.rng = rng
        self.attempt = 0  # failures in a row so far

    def next(self) -> float:
        wait = delay(self.attempt, self.low, self.high, self.rng)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        self.attempt = 0
