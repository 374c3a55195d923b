"""One timer for a sans-IO state machine: a single ``DelayedCall`` armed to its next due time.

A sans-IO layer says when it wants to run next (``next_timer()``); its driver keeps one
call on the reactor for that time instead of one per thing the layer waits for (a
``DelayedCall`` per request costs more than the request's own work). ``arm(due)``
after every input moves the call earlier when ``due`` is earlier and leaves it
otherwise: a layer woken early does nothing and says its due time again, so the call
is never moved later (cancelling and rescheduling per datagram would cost what this
saves). Used by the UDP edge (``edge/coap.py``); the DTLS edge and the reliable
transports have the same shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IReactorTime


class OneTimer:
    def __init__(self, clock: IReactorTime, fire: Callable[[], None]):
        self.clock = clock
        self.fire = fire  # called when the due time comes (then arm again)
        self._call: Optional[Any] = None
        self._due = math.inf

    @property
    def due(self) -> float:
        """When the call fires (infinity when none is armed)."""
        return self._due if self._call is not None else math.inf

    def arm(self, due: Optional[float]) -> None:
        """Fire at ``due`` (the clock's seconds) or earlier; None or infinity: no need."""
        if due is None or due == math.inf:
            return
        if self._call is not None:
            if due >= self._due:
                return
            self._call.cancel()
        self._due = due
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fired)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fired(self) -> None:
        self._call = None
        self.fire()


def repeating(clock: IReactorTime, function: Callable[[], Any]) -> Any:
    """A ``LoopingCall`` of ``function`` on ``clock`` (Twisted's ``LoopingCall`` takes its
    clock as an attribute, not as an argument: it is set here, where it is built)."""
    from twisted.internet.task import LoopingCall
    loop = LoopingCall(function)
    loop.clock = clock
    return loop
