"""The platform's renames and deletes not yet in the shared registry, as the bridge sees them.

With a shared (PostgreSQL) registry a ``gateway_device_renamed`` or
``gateway_device_deleted`` is first written to the bridge's journal in DATA_DIR
(``bridge.edge.registry_journal``), then applied to the registry by its
listening connection (``bridge.edge.shared_registry``), at once or when an
outage is over. Meanwhile the bridge's copy of the registry still holds the old
rows, so its lookups (``bridge.glue.lookup``) pass every device they find through
``Overlay.names``: base name -> current name, or None for a deleted device. The
map is the journal's changes folded in order: a rename follows the device through
earlier renames, a delete ends it.

A change stays in the overlay after it was applied until the copy itself shows it:
until a load of the registry that began after the change was committed is in place
(``loaded``). Dropping it any earlier would show the old name for the moment
between the commit and the reload. A change some other process of this DATA_DIR
applied (it left the journal) counts as committed when this process noticed it.

Pure: values in, values out; the edge passes the times (``time.monotonic()`` of this
host, the same clock in every process of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .actions import Device

RENAME = "rename"
DELETE = "delete"

# What applying a change to the shared registry came to (``bridge.registry_pg``); here, not
# there, so that the bridge's glue reads them without psycopg (a SQLite-only install).
APPLIED = "applied"
UNKNOWN = "unknown"  # no such live device: renamed or deleted already, or never here
REFUSED = "refused"  # the registry cannot take it (a device of the new name exists)
DUPLICATE = "duplicate"  # this key was applied before (a bridge stopped before noting it)


@dataclass(frozen=True)
class Applied:
    id: int  # the change's journal id
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class Change:
    """One platform change as journaled: ``id`` orders it in its DATA_DIR, ``key`` names it
    everywhere (the journal's own id and ``id``: the registry applies a key once)."""
    id: int
    key: str
    kind: str  # RENAME or DELETE
    name: str
    new_name: Optional[str] = None  # a rename's new name
    received: float = 0.0  # wall-clock time the platform's message arrived


def fold(changes: Iterable[Change]) -> Dict[str, Optional[str]]:
    """Base name -> current name (None: deleted) after ``changes``, in the order given. A
    name the map does not hold is unchanged."""
    names: Dict[str, Optional[str]] = {}
    for change in changes:
        target = change.new_name if change.kind == RENAME else None
        hits = [base for base, now in names.items() if now == change.name]
        if change.name not in names:
            hits.append(change.name)  # a base device still under its own name
        for base in hits:
            names[base] = target
    return {base: now for base, now in names.items() if now != base}


def mapped(device: Device, names: Dict[str, Optional[str]]) -> Optional[Device]:
    """``device`` as the overlay has it now: itself, renamed, or None (deleted)."""
    if device.name not in names:
        return device
    name = names[device.name]
    return Device(name, device.type) if name is not None else None


class Overlay:
    """The changes not yet shown by the registry's copy, and their ``names`` map (one dict,
    updated in place: the lookups hold it)."""

    def __init__(self) -> None:
        self.pending: Dict[int, Change] = {}  # in the journal, not applied
        self.awaiting: Dict[int, Tuple[Change, float]] = {}  # applied at t, not yet loaded
        self.names: Dict[str, Optional[str]] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, change: Change) -> bool:
        self.pending[change.id] = change
        return self._refold()

    def journal(self, changes: Iterable[Change], now: float) -> bool:
        """The journal's changes as of now (another process may have added some, or applied
        them: those that left count as committed ``now``). True if ``names`` changed."""
        current = {change.id: change for change in changes}
        for change_id, change in self.pending.items():
            if change_id not in current:
                self.awaiting[change_id] = (change, now)
        self.pending = {i: c for i, c in current.items() if i not in self.awaiting}
        return self._refold()

    def applied(self, ids: Iterable[int], committed: float) -> None:
        """``ids`` were committed to the registry before ``committed``; they leave the
        overlay with the first load that began at or after it (``names`` unchanged now)."""
        for change_id in ids:
            change = self.pending.pop(change_id, None)
            if change is not None:
                self.awaiting[change_id] = (change, committed)

    def loaded(self, started: float) -> bool:
        """A load of the registry that began at ``started`` is in place: the changes
        committed before it are in the copy. True if ``names`` changed."""
        done = [i for i, (_, committed) in self.awaiting.items() if committed <= started]
        if not done:
            return False
        for change_id in done:
            del self.awaiting[change_id]
        return self._refold()

    def to_apply(self, limit: int) -> Tuple[Change, ...]:
        """The first ``limit`` changes still to apply, in order."""
        return tuple(self.pending[i] for i in sorted(self.pending)[:limit])

    def _refold(self) -> bool:
        ordered: List[Tuple[int, Change]] = sorted(
            list(self.pending.items()) + [(i, c) for i, (c, _) in self.awaiting.items()])
        names = fold(change for _, change in ordered)
        if names == self.names:
            return False
        self.names.clear()
        self.names.update(names)
        return True
