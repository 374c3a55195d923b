"""The journal of platform changes for the shared registry: SQLite in DATA_DIR, in order.

With ``REGISTRY_URL=postgresql://...`` the platform's renames and deletes are written
here first (``registry-journal.sqlite3``, WAL, ``synchronous`` as the outbox's: FULL
by default), before the MQTT message that carried them is acknowledged, and leave
only once the registry has them (``bridge.edge.shared_registry`` applies them). A
registry that is unreachable, hung, or restarting, or a bridge killed meanwhile, so
loses none of them; the next start applies what is left.

Every process of one DATA_DIR (the single process, or each worker) writes the same
file, so the workers also see each other's changes (``refresh``, by SQLite's
``data_version``) and any of them may apply any change: each row's key (this file's
random origin and its id) is applied at most once by the registry. Ids are
AUTOINCREMENT, never reused, so a key never names two changes. The file is the
owner's only (0600); a damaged one is set aside like a damaged outbox and the start
refused with one line.
"""

from __future__ import annotations

import uuid
from typing import Iterable, List, Optional

from ..core.platform_changes import Change
from ..sqlite import CorruptDatabase, Transaction, open_database, set_aside

NAME = "registry-journal.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    new_name TEXT,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_origin (
    origin   TEXT NOT NULL
);
"""


class RegistryJournal:
    def __init__(self, path: str, synchronous: str = "FULL"):
        """Raises ``StartupError`` (one line naming the file) if it cannot be used."""
        self.path = path
        try:
            self._db = open_database(path, _SCHEMA, synchronous)
        except CorruptDatabase as exc:
            moved = set_aside(path)
            raise CorruptDatabase(path, exc.reason, "moved it to %s; the platform changes it "
                                  "held are not applied (apply them with coapbridge devices); "
                                  "the next start begins with an empty journal" % moved)
        with Transaction(self._db):
            self._db.execute("INSERT INTO journal_origin SELECT ? WHERE NOT EXISTS "
                             "(SELECT 1 FROM journal_origin)", (uuid.uuid4().hex,))
        self.origin = self._db.execute("SELECT origin FROM journal_origin").fetchall()[0][0]
        self._version: Optional[int] = None
        self._changes: List[Change] = []
        self.refresh()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return len(self._changes)

    def changes(self) -> List[Change]:
        """Every change not yet applied, in order (as of the last ``refresh`` or write)."""
        return list(self._changes)

    def append(self, kind: str, name: str, new_name: Optional[str], received: float) -> Change:
        """Write one change (one transaction, synced to disk) and return it."""
        with Transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO changes (kind, name, new_name, received) VALUES (?, ?, ?, ?)",
                (kind, name, new_name, received))
            change_id = cursor.lastrowid
        change = Change(change_id, self._key(change_id), kind, name, new_name, received)
        self._read()
        return change

    def remove(self, ids: Iterable[int]) -> None:
        """The registry has these changes: they leave the journal."""
        rows = [(change_id,) for change_id in ids]
        if rows:
            with Transaction(self._db):
                self._db.executemany("DELETE FROM changes WHERE id = ?", rows)
            self._read()

    def refresh(self) -> bool:
        """Read the file again if another process wrote it; True when it did."""
        version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
        if version == self._version:
            return False
        self._version = version
        self._read()
        return True

    def _read(self) -> None:
        rows = self._db.execute("SELECT id, kind, name, new_name, received FROM changes "
                                "ORDER BY id").fetchall()
        self._changes = [Change(i, self._key(i), kind, name, new_name, received)
                         for i, kind, name, new_name, received in rows]

    def _key(self, change_id: int) -> str:
        return "%s:%d" % (self.origin, change_id)
