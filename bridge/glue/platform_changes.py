"""The platform's renames and deletes of devices, carried into the registry.

The core has followed a ``gateway_device_renamed`` / ``gateway_device_deleted`` by the
time its ``RenameDevice`` / ``DeleteDevice`` action comes here; what is left is the
registry, and the uplinks already in the outbox (a rename rewrites them, so they
reach the platform under the new name).

* SQLite registry (one host): written at once, as the change comes; the file is
  local and the write synchronous, so it is done before the MQTT message is
  acknowledged.
* Shared registry (PostgreSQL): written first to the journal in DATA_DIR
  (``bridge.edge.registry_journal``), synced before the message is acknowledged, and
  applied by the registry's listener (``bridge.edge.shared_registry``: ``to_apply``,
  ``applied``, ``loaded`` are its hooks) at once, or when the registry is reachable
  again, in order and each once. Until the registry's copy shows a change, the
  lookups see it through the overlay (``bridge.core.platform_changes``): the new name
  is used, a deleted device's token gets 4.01, its DTLS sessions end.

With worker processes the journal is one file for all of them: each reads the others'
changes at its next turn (``PRAGMA data_version``), so a change one worker received
holds in all, and any of them applies it.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from twisted.python.failure import Failure

from ..core import gateway, names
from ..core.actions import DeleteDevice, RenameDevice
from ..core.platform_changes import (APPLIED, DELETE, DUPLICATE, REFUSED, RENAME, UNKNOWN,
                                     Applied, Overlay)
from ..logs import logger
from ..registry import RegistryError
from .lookup import RegistryView

log = logger("bridge")


class PlatformChanges:
    def __init__(self, view: RegistryView, commit: Callable[[], None],
                 outbox: Callable[[], Any], monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.view = view
        self.commit = commit  # the uplinks being stored go first: a rename covers them
        self.outbox = outbox  # the open outbox, or None
        self.monotonic = monotonic
        self.wall = wall
        self.overlay = Overlay()
        self.journal: Optional[Any] = None  # a RegistryJournal, with a shared registry
        self.deferred: Set[int] = set()  # journaled while the registry was unreachable
        view.renamed = self.overlay.names

    def attach(self, journal: Any, shared_file: bool) -> None:
        """Journal the changes in ``journal`` (what it already holds is applied first);
        ``shared_file``: other processes write it too (workers), read it every turn."""
        self.journal = journal
        self.overlay.journal(journal.changes(), self.monotonic())
        self.deferred = {change.id for change in journal.changes()}  # from before a restart
        self.view.journal_refresh = self._read_journal if shared_file else None
        self.view.overlay_changed()

    def detach(self) -> Any:
        journal, self.journal = self.journal, None
        self.view.journal_refresh = None
        return journal

    def waiting(self) -> int:
        """Changes journaled that the registry does not have yet."""
        return len(self.overlay)

    def notes(self) -> List[str]:
        """For ``/readyz``'s body."""
        count = self.waiting()
        return ["platform changes waiting for the registry: %d" % count] if count else []

    # -- the core's actions ------------------------------------------------------------

    def rename(self, action: RenameDevice) -> None:
        self._change(RENAME, action.old, action.new)

    def delete(self, action: DeleteDevice) -> None:
        self._change(DELETE, action.name, None)

    def _change(self, kind: str, name: str, new: Optional[str]) -> None:
        if self.view.registry is None:
            return
        if self.journal is None:
            self._write(kind, name, new)
            return
        why = names.problem(new) if kind == RENAME and new is not None else None
        if why is not None:  # as the registry itself would refuse it
            log.error("Platform asked to rename {device} to {new_name}, but: {error}",
                      device=names.printable(name), new_name=names.printable(new or ""),
                      error=why)
            return
        try:
            change = self.journal.append(kind, name, new, self.wall())
        except sqlite3.Error as exc:
            log.error("Cannot journal the platform's {kind} of {device} in {path}: {error}; "
                      "writing it to the registry directly", kind=kind, device=name,
                      path=self.journal.path, error=str(exc))
            self._write(kind, name, new)
            return
        if kind == RENAME:
            self._rename_outbox(name, new or "")
        if self.overlay.add(change):
            self.view.overlay_changed()
        registry = self.view.registry
        if registry is not None and registry.reachable():
            where = ""
        else:
            self.deferred.add(change.id)
            where = " (the registry is unreachable: kept in %s until it is back, %d waiting)" \
                % (self.journal.path, self.waiting())
        if kind == RENAME:
            log.info("Platform renamed device {device} to {new_name}{where}", device=name,
                     new_name=new, where=where)
        else:
            log.info("Platform deleted device {device}{where}", device=name, where=where)

    def _rename_outbox(self, old: str, new: str) -> None:
        outbox = self.outbox()
        if outbox is not None:
            self.commit()
            outbox.rename(old, new, lambda topic, payload: gateway.rename_device(
                topic, payload, old, new))

    # -- SQLite: at once ---------------------------------------------------------------

    def _write(self, kind: str, name: str, new: Optional[str]) -> None:
        if kind == RENAME:
            d = self.view.write("rename", name, new)
        else:
            d = self.view.write("mark_deleted", name)
        d.addCallbacks(self._written, self._refused, (kind, name, new), None, (kind, name, new))
        d.addErrback(lambda f: log.failure("Applying the platform's {kind} of {device} failed",
                                           failure=f, kind=kind, device=name))

    def _written(self, changed: bool, kind: str, name: str, new: Optional[str]) -> None:
        if kind == RENAME:
            self._rename_outbox(name, new or "")
        self.view.changed()  # the next request already sees it
        if kind == RENAME:
            log.info("Platform renamed device {device} to {new_name}", device=name,
                     new_name=new, known=changed)
        else:
            log.info("Platform deleted device {device}", device=name, known=changed)

    def _refused(self, failure: Failure, kind: str, name: str, new: Optional[str]) -> None:
        failure.trap(RegistryError)  # RegistryUnavailable too: the shared registry is lost
        log.error("Platform asked to {kind} {device}, but: {error}", kind=kind, device=name,
                  error=str(failure.value))

    # -- the shared registry's hooks (reactor thread) -----------------------------------

    def to_apply(self, limit: int) -> Sequence[Any]:
        return self.overlay.to_apply(limit)

    def applied(self, results: Sequence[Applied], committed: float) -> None:
        """The registry committed ``results`` before ``committed`` (monotonic): they leave
        the journal now, and the overlay with the next load."""
        changes = {c.id: c for c in self.overlay.to_apply(len(self.overlay))}
        self.overlay.applied([r.id for r in results], committed)
        self._log(results, changes)
        if self.journal is not None:
            try:
                self.journal.remove([r.id for r in results])
            except sqlite3.Error as exc:  # applied again after a restart: each key once
                log.error("Cannot remove applied platform changes from {path}: {error}",
                          path=self.journal.path, error=str(exc))

    def loaded(self, started: float) -> bool:
        return self.overlay.loaded(started)

    def _log(self, results: Sequence[Applied], changes: Dict[int, Any]) -> None:
        counts: Dict[str, int] = {}
        for result in results:
            change = changes.get(result.id)
            if change is None:
                continue
            if result.id in self.deferred:
                self.deferred.discard(result.id)
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
            what = "rename of %s to %s" % (change.name, change.new_name) \
                if change.kind == RENAME else "delete of %s" % change.name
            if result.outcome == REFUSED:
                log.error("Platform asked for the {change}, but the registry refused it: "
                          "{error}", change=what, device=change.name, error=result.reason)
            elif result.outcome == UNKNOWN:
                log.info("Platform's {change}: no live device {device} in the registry "
                         "(another bridge applied it, or it was removed)", change=what,
                         device=change.name)
            else:
                log.debug("Platform's {change} is in the registry ({outcome})", change=what,
                          device=change.name, outcome=result.outcome)
        if counts:
            log.info("Applied {count:plural:journaled platform change} to the registry ({applied} "
                     "applied, {unknown} found done or gone, {refused} refused)",
                     count=sum(counts.values()), applied=counts.get(APPLIED, 0)
                     + counts.get(DUPLICATE, 0), unknown=counts.get(UNKNOWN, 0),
                     refused=counts.get(REFUSED, 0))

    def _read_journal(self) -> bool:
        """Another worker's changes (once per turn): True if the overlay changed."""
        journal = self.journal
        if journal is None or not journal.refresh():
            return False
        return self.overlay.journal(journal.changes(), self.monotonic())
