"""A running bridge's view of the shared (PostgreSQL) registry: never a query on the reactor.

The core looks devices up in ``devices`` (and the DTLS transport in
``certificates`` and ``psk``): dicts held in memory and updated in place by
``refresh()``, as the SQLite ``Registry``'s are, so the request path reads
memory only. Everything that talks to PostgreSQL runs in a Twisted
``ThreadPool`` given by the service (with the reactor, also given: its
``callLater`` is the retry clock): a dedicated connection LISTENs on
``coapbridge_registry`` (the table's trigger NOTIFYs on every change, see
``bridge.registry_pg``) and, when notified, loads the live rows and works out
what changed since its last load (``Delta``), which the next ``refresh()`` on
the reactor thread applies; the
writes a bridge makes (local provisioning, the platform's renames and
deletes) go through ``run()``, which returns a Deferred.

Why threads and not psycopg's non-blocking mode with the socket watched by the
reactor: psycopg 3's asynchronous API is asyncio's, and its pool too; under
Twisted's default reactor we would drive libpq's state machine ourselves
(connect, LISTEN, results, errors, reconnects), which is the code a driver is
for. Blocking psycopg in a small pool of threads keeps the driver's own code
paths; the only shared state is the snapshot handed over to the reactor thread
through Deferred callbacks.

Connection lost (the server stopped, the network gone: libpq's error; or hung:
the heartbeat every ``HEARTBEAT`` waits gets no answer within ``CHECK_TIMEOUT``, a
load none within ``registry_pg.QUERY_TIMEOUT``): the bridge keeps serving from its
last snapshot, logs one warning, ``reachable()`` turns False (``/readyz`` says
"registry not reachable"), and reconnects with a doubling delay; once back it
LISTENs again, reloads everything (changes made meanwhile included) and logs
once that the registry is back. A server that hangs is so noticed within about
``HEARTBEAT * WAIT + CHECK_TIMEOUT`` (4.5 s).

The platform's renames and deletes (``changes``, ``bridge.glue.platform_changes``)
are applied by the listener too, before its next wait (or with the reconnection):
applying them and reloading happen in one call, so the reload that shows a change is
put in place in the same ``refresh()`` that takes it out of the overlay
(``bridge.core.platform_changes``), and no request sees the old name in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import psycopg
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from ..settings import StartupError
from ..core.actions import Device
from ..core.backoff import Backoff
from ..logs import logger
from ..registry import Entry
from ..core.platform_changes import Change
from ..registry_pg import (CHANNEL, LIVE_ROWS, QUERY_TIMEOUT, Applied, PgRegistry, Snapshot,
                           apply_changes, connect, deadline, one_line, snapshot)
from ..registry_url import RegistryTarget

log = logger("registry")

WAIT = 0.5  # s one wait for a notification lasts (and so, at most, a stop)
HEARTBEAT = 4  # waits without a notification between two liveness queries (2 s)
CHECK_TIMEOUT = 2.0  # s the liveness query may take: past it the registry counts as lost
APPLY_BATCH = 500  # platform changes applied in one transaction
MIN_DELAY, MAX_DELAY = 0.5, 30.0  # s between reconnection attempts, doubling
MAX_PENDING = 16  # changes kept for the next refresh; past that they are applied at once


Views = Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]  # devices, certificates, psk


@dataclass(frozen=True)
class Delta:
    """What changed between two snapshots, per view: keys gone, and entries new or changed.
    Worked out in a pool thread, so the reactor thread applies only the changes (a whole
    50,000-device swap took 67 ms there; a delta costs what changed)."""
    removed: Tuple[List[str], List[str], List[str]]
    changed: Views

    def __bool__(self) -> bool:
        return any(self.removed) or any(self.changed)


@dataclass(frozen=True)
class Loaded:
    """A load of the live rows: what changed, when the load began (``time.monotonic()``),
    and the outcomes of the platform changes applied just before it."""
    change: Delta
    started: float
    applied: Tuple[Applied, ...] = ()


class Changes(Protocol):
    """The platform's changes waiting for the registry (``bridge.glue.platform_changes``)."""

    def to_apply(self, limit: int) -> Sequence[Change]: ...

    def applied(self, results: Sequence[Applied], committed: float) -> None: ...

    def loaded(self, started: float) -> bool: ...


def delta(old: Views, new: Views) -> Delta:
    removed = tuple([key for key in before if key not in after]
                    for before, after in zip(old, new))
    changed = tuple({key: value for key, value in after.items() if before.get(key) != value}
                    for before, after in zip(old, new))
    return Delta(removed, changed)  # type: ignore[arg-type]


def _views(loaded: Snapshot) -> Views:
    return loaded.devices, loaded.certificates, loaded.psk


class _Listener:
    """The LISTENing connection and the last snapshot loaded; used only in the pool's
    threads, one call at a time."""

    def __init__(self, conninfo: str):
        self.conninfo = conninfo
        self.conn: Optional[psycopg.Connection] = None
        self.idle = 0
        self.last: Views = ({}, {}, {})

    def open_and_load(self, changes: Sequence[Change] = ()) -> Loaded:
        """(Re)connect, LISTEN, apply ``changes``, load: what changed since the last
        snapshot (or, the first time, everything)."""
        self.close()
        conn = connect(self.conninfo, autocommit=True)
        try:
            with deadline(conn, QUERY_TIMEOUT + 1):
                conn.execute("LISTEN %s" % CHANNEL)  # first: a change made during the load counts
            loaded = self._apply_and_load(conn, changes)
        except BaseException:
            conn.close()
            raise
        self.conn, self.idle = conn, 0
        return loaded

    def wait(self, changes: Sequence[Change] = ()) -> Optional[Loaded]:
        """Apply ``changes`` and load, or wait up to ``WAIT`` s for a change: the load, or
        None when nothing was loaded."""
        conn = self.conn
        if conn is None:
            raise psycopg.OperationalError("the registry connection is closed")
        if changes:
            self.idle = 0
            return self._apply_and_load(conn, changes)
        if not any(True for _ in conn.notifies(timeout=WAIT, stop_after=1)):
            self.idle += 1
            if self.idle >= HEARTBEAT:
                self.idle = 0
                with deadline(conn, CHECK_TIMEOUT):
                    conn.execute("SELECT 1").fetchall()
            return None
        for _ in conn.notifies(timeout=0.02):  # a burst of changes: one reload
            pass
        self.idle = 0
        return self._apply_and_load(conn, ())

    def _apply_and_load(self, conn: psycopg.Connection, changes: Sequence[Change]) -> Loaded:
        applied = tuple(apply_changes(conn, changes)) if changes else ()
        with deadline(conn, QUERY_TIMEOUT + 1):
            started = time.monotonic()  # after the commit: this load shows the changes
            rows = conn.execute(LIVE_ROWS).fetchall()
        return Loaded(self._since_last(snapshot(rows)), started, applied)

    def _since_last(self, loaded: Snapshot) -> Delta:
        new = _views(loaded)
        change, self.last = delta(self.last, new), new
        return change

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


class SharedRegistry:
    """The registry at ``store`` as the bridge reads it; ``start()`` begins listening."""

    def __init__(self, store: PgRegistry, listener: _Listener, initial: Loaded,
                 reactor: Any, threadpool: Any, changes: Optional[Changes] = None):
        self.store = store
        self.display = store.display
        self.reactor = reactor
        self.threadpool = threadpool
        self._listener = listener
        self.devices: Dict[str, Device] = {}  # the live views, updated in place
        self.certificates: Dict[str, Device] = {}
        self.psk: Dict[str, Tuple[Device, bytes]] = {}
        self._pending: List[Loaded] = [initial]  # loaded, not yet in place
        self.changes = changes  # the platform's, to apply (read once it listens: start())
        self._unreported = False  # applied without a request (see _queue), not yet told
        self._reachable = True
        self._stopping = False
        self._backoff = Backoff(MIN_DELAY, MAX_DELAY)  # one connection: no jitter
        self._retry: Any = None  # the IDelayedCall of the next reconnection
        self._busy: Optional[defer.Deferred] = None  # the listener's call in progress
        self.refresh()  # the first load, in place

    # -- the bridge's view (reactor thread, memory only) --------------------------

    def refresh(self) -> bool:
        """Put the changes loaded since the last refresh in place (in order); True when a
        device or credential changed since the last refresh."""
        self._apply()
        changed, self._unreported = self._unreported, False
        return changed

    def _apply(self) -> None:
        pending, self._pending = self._pending, []
        views = (self.devices, self.certificates, self.psk)
        for loaded in pending:
            change = loaded.change
            if change:
                self._unreported = True
                for live, removed, changed in zip(views, change.removed, change.changed):
                    for key in removed:
                        live.pop(key, None)
                    live.update(changed)  # type: ignore[attr-defined]
            if self.changes is not None and self.changes.loaded(loaded.started):
                self._unreported = True  # the overlay changed with it

    def reachable(self) -> bool:
        """False from a lost connection until the registry answers again (no query here)."""
        return self._reachable

    def lookup(self, token: str) -> Any:
        return self.devices.get(token)

    def run(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        """``PgRegistry.<method>(*args, **kwargs)`` in the thread pool: a Deferred of its
        answer (or of its ``RegistryError``; ``RegistryUnavailable`` when the database is
        gone)."""
        return deferToThreadPool(self.reactor, self.threadpool, getattr(self.store, method),
                                 *args, **kwargs)

    def entries(self) -> List[Entry]:
        """Every device, read now: blocks, so only for start-up (before the reactor runs)."""
        return self.store.entries()

    # -- listening -------------------------------------------------------------------

    def start(self) -> None:
        self._wait()

    def _call(self, work: Callable[[], Any], done: Callable[[Any], None],
              failed: Callable[[Failure], None]) -> None:
        d = deferToThreadPool(self.reactor, self.threadpool, work)
        self._busy = d
        d.addBoth(self._idle)
        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("Watching the device registry failed", failure=f))

    def _idle(self, result: Any) -> Any:
        self._busy = None
        return result

    def _to_apply(self) -> Sequence[Change]:
        return self.changes.to_apply(APPLY_BATCH) if self.changes is not None else ()

    def _wait(self) -> None:
        if not self._stopping:
            changes = self._to_apply()
            self._call(lambda: self._listener.wait(changes), self._waited, self._lost)

    def _queue(self, loaded: Optional[Loaded]) -> None:
        if loaded is None:
            return
        if loaded.applied and self.changes is not None:
            self.changes.applied(loaded.applied, loaded.started)
        self._pending.append(loaded)  # even unchanged: the overlay waits for its start time
        if len(self._pending) > MAX_PENDING:  # no request came for a while: keep it small
            self._apply()

    def _waited(self, loaded: Optional[Loaded]) -> None:
        self._queue(loaded)
        self._wait()

    def _lost(self, failure: Failure) -> None:
        if self._stopping:
            return
        if not failure.check(psycopg.Error):
            log.failure("Watching the device registry {registry} failed; reconnecting",
                        failure=failure, registry=self.display)
        elif self._reachable:
            log.warn("Device registry {registry} unreachable ({reason}): serving the last copy "
                     "({count:plural:device}), retrying", registry=self.display,
                     reason=one_line(failure.value), count=len(self.devices))
        self._reachable = False
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        self._retry = self.reactor.callLater(self._backoff.next(), self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        if not self._stopping:
            changes = self._to_apply()
            self._call(lambda: self._listener.open_and_load(changes), self._back,
                       self._still_lost)

    def _back(self, loaded: Loaded) -> None:
        self._queue(loaded)
        self._backoff.reset()
        self._reachable = True
        log.info("Device registry {registry} reachable again ({count:plural:live device})",
                 registry=self.display, count=len(self._listener.last[0]))
        self._wait()

    def _still_lost(self, failure: Failure) -> None:
        if self._stopping:
            return
        if not failure.check(psycopg.Error):
            log.failure("Reconnecting to the device registry failed", failure=failure)
        else:
            log.debug("Device registry {registry} still unreachable: {reason}",
                      registry=self.display, reason=one_line(failure.value))
        self._schedule_reconnect()

    # -- stopping --------------------------------------------------------------------

    def stop(self) -> defer.Deferred:
        """Stop listening (after the wait in progress, at most ``WAIT`` s) and close every
        connection, in the pool's threads; fires when done."""
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        busy = self._busy
        d: defer.Deferred = defer.succeed(None)
        if busy is not None:
            finished: defer.Deferred = defer.Deferred()
            busy.addBoth(lambda result: (finished.callback(None), result)[1])
            d = finished
        d.addCallback(lambda _: deferToThreadPool(self.reactor, self.threadpool, self.close))
        return d

    def close(self) -> None:
        """Close at once (blocking): the start-up's way out, and the end of ``stop``."""
        self._stopping = True
        self._listener.close()
        self.store.close()


def open_shared(target: RegistryTarget, pool_size: int, reactor: Any,
                threadpool: Any, changes: Optional[Changes] = None) -> SharedRegistry:
    """Connect, migrate, LISTEN and load, blocking (the service does it before the reactor
    runs); raises ``StartupError`` with one line when the registry cannot be used."""
    store = PgRegistry(target.conninfo, target.display, pool_size)
    listener = _Listener(target.conninfo)
    try:
        initial = listener.open_and_load()
    except psycopg.Error as exc:
        store.close()
        raise StartupError("cannot use the device registry %s: %s"
                           % (target.display, one_line(exc)))
    return SharedRegistry(store, listener, initial, reactor, threadpool, changes)
