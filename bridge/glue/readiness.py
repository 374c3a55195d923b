"""Whether this bridge should get devices' traffic (``/readyz``), and what is degraded.

Ready while it can accept and store uplinks: CoAP listening, the outbox writable and
below its bounds (``outbox.max_entries``, ``max_bytes``, ``max_age``: past them uplinks
get 5.03), the registry loaded. The MQTT link is not among them: while the platform is
unreachable every uplink is still stored and answered 2.01, and delivered once it is
back, so taking the bridge out of a load balancer would only move its devices
(observations and Block1 uploads lost) for nothing; a lost link is reported instead
(the ``/readyz`` body, ``coapbridge_mqtt_connected``, the log), and makes the bridge
unready only with ``health.ready_requires_mqtt``. A shared registry that cannot be
reached is reported the same way: the bridge serves its last copy.

``Readiness.check`` answers for ``/readyz`` (``bridge.edge.metrics.render_ready``) and
the ``coapbridge_ready`` gauge; ``watch`` (from the core's timer, once a second) logs
each change once.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from ..logs import logger

log = logger("health")

WATCH_EVERY = 1.0  # s between looks for the log

MQTT = "mqtt not connected"
REGISTRY = "registry not reachable"
# s a failed outbox write keeps the bridge unready (a later write that succeeds ends it at
# once): with no traffic, nothing else would try the disk again
OUTBOX_FAILURE_HOLD = 10.0


class Readiness:
    def __init__(self, clock: Any, transports: Any, outbox_commit: Any, core: Any,
                 registry_view: Any, link: Any, requires_mqtt: bool):
        self.clock = clock
        self.transports = transports  # ready while plain CoAP (tuple peers) is there
        self.outbox_commit = outbox_commit
        self.core = core
        self.registry_view = registry_view
        self.link = link
        self.requires_mqtt = requires_mqtt
        self._last: Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]] = None
        self._next_watch = float("-inf")
        self._stopping = False

    def stopping(self) -> None:
        """The bridge stops: said once, and nothing more (its parts stop one by one)."""
        if not self._stopping:
            self._stopping = True
            log.info("Stopping: not ready for devices")

    def check(self) -> Tuple[List[str], List[str]]:
        """(what keeps the bridge from taking uplinks, what is degraded): ready when the
        first is empty."""
        missing: List[str] = ["stopping"] if self._stopping else []
        notes: List[str] = []
        if tuple not in self.transports:
            missing.append("coap not listening")
        outbox = self.outbox_problem()
        if outbox is not None:
            missing.append(outbox)
        registry = self.registry_view.registry
        if registry is None:
            missing.append("registry not loaded")
        elif not registry.reachable():
            notes.append(REGISTRY)
        if not self.link.connected:
            (missing if self.requires_mqtt else notes).append(MQTT)
        return missing, notes

    def outbox_problem(self) -> Optional[str]:
        """Why the outbox cannot take uplinks now (``check``), or None: not open, a
        bound reached, or a write failed in the last ``OUTBOX_FAILURE_HOLD`` s."""
        if self.outbox_commit.outbox is None:
            return "outbox not open"
        now = self.clock.seconds()
        failed = self.outbox_commit.failed
        if failed is not None and now - failed[1] < OUTBOX_FAILURE_HOLD:
            return "outbox not writable (%s)" % failed[0]
        full = self.core.outbox_full(now)
        return "outbox full (%s)" % full if full is not None else None

    def watch(self, now: float, changed: bool = False) -> None:
        """Log a change of readiness (or of what is degraded), once: looked at once a
        second (the outbox's bounds), and at once when ``changed`` (the MQTT link).
        Nothing is said before the bridge is first ready (it is starting)."""
        if self._stopping or (now < self._next_watch and not changed):
            return
        self._next_watch = now + WATCH_EVERY
        missing, notes = self.check()
        state = (tuple(missing), tuple(notes))
        if state == self._last or (self._last is None and missing):
            return
        first = self._last is None
        self._last = state
        if missing:
            log.warn("Not ready for devices: {missing}", missing=", ".join(missing))
        elif notes:
            log.info("Ready for devices, degraded: {degraded} (uplinks are stored and "
                     "answered; health.ready_requires_mqtt is off)" if MQTT in notes else
                     "Ready for devices, degraded: {degraded}", degraded=", ".join(notes))
        elif not first:
            log.info("Ready for devices again")
        else:
            log.info("Ready for devices")
