"""The outbox's group commit: one SQLite transaction per reactor turn; the backlog in slices.

Runs on the reactor thread: a writer thread was tried, and with CPython's GIL
passing back and forth for every row it made the p99 latency four times worse.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, List, Optional, Tuple, Union

from ..settings import StartupError
from ..core.actions import DeadLetter, Delete, Entry, LoadBacklog, Store, StoreMany
from ..edge.outbox import Outbox
from ..logs import logger

log = logger("bridge")

Apply = Callable[[List[Any]], None]


class OutboxCommit:
    """Collects the turn's ``Store``/``StoreMany``, ``Delete`` and ``DeadLetter`` actions
    and writes them at the end of the turn (``commit``); tells the core what was stored
    (``on_stored``) or could not be (``on_store_failed``)."""

    def __init__(self, core: Any, reactor: Any, apply: Apply,
                 before_write: Callable[[], None]):
        self.core = core
        self.reactor = reactor
        self.apply = apply
        self.before_write = before_write  # hands the turn's plain uplinks to the core
        self.outbox: Optional[Outbox] = None  # attached while the outbox service runs
        self.commits = 0  # transactions written, for the metrics
        self._stores: List[Union[Store, StoreMany]] = []  # in order
        self._deletes: List[int] = []
        self._dead: List[DeadLetter] = []
        self._call: Any = None
        self._backlog_calls: List[Any] = []
        # (error, when) of the last write that failed, until one succeeds: readiness
        self.failed: Optional[Tuple[str, float]] = None

    # -- the core's actions --------------------------------------------------------------

    def attach(self, outbox: Optional[Outbox]) -> None:
        """Write to ``outbox`` from now on (the outbox service, once it opened it)."""
        self.outbox = outbox

    def detach(self) -> Optional[Outbox]:
        """Write no more: the outbox it wrote to (the service closes it), if any."""
        outbox, self.outbox = self.outbox, None
        return outbox

    def store(self, action: Union[Store, StoreMany]) -> None:
        self._stores.append(action)
        self.schedule()

    def delete(self, action: Delete) -> None:
        self._deletes.extend(action.ids)
        self.schedule()

    def dead_letter(self, action: DeadLetter) -> None:
        self._dead.append(action)
        self.schedule()

    def load_backlog(self, action: LoadBacklog) -> None:
        # on a later turn: reading a slice is no reason to make requests wait
        self._backlog_calls = [c for c in self._backlog_calls if c.active()]
        self._backlog_calls.append(self.reactor.callLater(0, self._load_backlog, action))

    # -- writing -------------------------------------------------------------------------

    def schedule(self) -> None:
        if self._call is None:
            self._call = self.reactor.callLater(0, self.commit)

    def commit(self) -> None:
        """Write this turn's outbox changes in one transaction: store every new uplink,
        then answer its device; remove what the broker acknowledged and set aside what
        the platform refused."""
        self.before_write()  # its stores go with this write
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.outbox is None:
            return
        stores, self._stores = self._stores, []
        deletes, self._deletes = self._deletes, []
        dead, self._dead = self._dead, []
        if stores or deletes or dead:
            self._write(stores, deletes, dead)

    def _write(self, stores: List[Union[Store, StoreMany]], deletes: List[int],
               dead: List[DeadLetter]) -> None:
        assert self.outbox is not None
        now = self.reactor.seconds()
        entries: List[Entry] = []  # written as the core made them
        # (store ref, position of its first entry): the entries of a StoreMany get
        # consecutive ids, and the core is told the first
        starts = []
        for store in stores:
            starts.append((store.ref, len(entries)))
            if type(store) is StoreMany:
                entries += store.entries
            else:
                entries.append(store.entry)
        try:
            ids = self.outbox.write(entries, deletes, [(d.id, d.reason) for d in dead], now)
            self.commits += 1
        except sqlite3.Error as exc:
            # the removals are harmless to keep (at worst delivered again after a restart):
            # they go with the next write
            self._deletes[:0] = deletes
            self._dead[:0] = dead
            self.failed = (str(exc), now)
            # one spell of failures whatever the write held (the core's StoreFailures): a
            # full disk logged once for a removal and again for a store was one condition
            # said twice
            if stores:
                self.apply(self.core.on_store_failed([s.ref for s in stores], str(exc), now))
            else:
                self.apply(self.core.on_update_failed(str(exc), now))
            return
        self.failed = None
        if stores:
            self.apply(self.core.on_stored([(ref, ids[start]) for ref, start in starts], now))
        else:
            self.apply(self.core.on_updated(now))

    # -- the backlog ---------------------------------------------------------------------

    def restore(self) -> None:
        """Tell the core what the outbox holds from before; it asks for it in slices."""
        assert self.outbox is not None
        count, size = self.outbox.stats()
        if count:
            log.info("Outbox holds {count:plural:undelivered uplink} ({size:plural:byte}) "
                     "from before; delivering them", count=count, size=size)
        self.apply(self.core.on_backlog(count, size, self.reactor.seconds()))

    def _load_backlog(self, action: LoadBacklog) -> None:
        if self.outbox is None:
            return
        try:
            entries = self.outbox.load_slice(action.after, action.rows, action.size)
        except (sqlite3.Error, StartupError) as exc:
            # the core asks for nothing more: the rest stays on disk for the next start
            log.error("Could not read the outbox {path} after entry {id}: {error}; its later "
                      "entries stay there (see docs/reliability.md)", path=self.outbox.path,
                      id=action.after, error=str(exc))
            return
        log.debug("Read {count:plural:outbox entry:outbox entries} after {id}",
                  count=len(entries), id=action.after)
        self.apply(self.core.on_restored(entries, self.reactor.seconds(), more=bool(entries)))

    def stop(self) -> None:
        """Write what is left and read no more of the backlog (the outbox closes next)."""
        for call in self._backlog_calls:
            if call.active():
                call.cancel()
        self._backlog_calls = []
        self.commit()
