"""Device registry: access token -> device name and profile, in SQLite under DATA_DIR.

The ``coapbridge devices`` commands write it; a running bridge reads it. The
bridge keeps an in-memory copy (``Registry.devices``) and reloads it when
SQLite's ``data_version`` says another connection changed the file
(``Registry.refresh``, once per reactor turn), so additions and removals take
effect at once, without a restart.

Tokens are secrets: use ``mask()`` whenever one goes into a log line.
"""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .core.actions import Device
from .sqlite import CorruptDatabase, Transaction, open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name    TEXT PRIMARY KEY,
    token   TEXT NOT NULL UNIQUE,
    type    TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0
);
"""


class RegistryError(Exception):
    """A registry operation that cannot be done, with a message for the operator."""


@dataclass(frozen=True)
class Entry:
    name: str
    token: str
    type: str
    deleted: bool = False
    pending: bool = False  # waits for local provisioning (pre_provisioned strategy)


def mask(token: Optional[str]) -> str:
    """A token fit for logs: its first four characters only."""
    if not token:
        return "<none>"
    return token[:4] + "…" if len(token) > 4 else "…"


class Registry:
    def __init__(self, path: str):
        """Raises ``StartupError`` (one line naming ``path``) if the file cannot be used."""
        self.path = path
        try:
            self._db = open_database(path, _SCHEMA)
        except CorruptDatabase as exc:
            # the operator's own data, and small: left where it is, for them to repair
            raise CorruptDatabase(path, exc.reason, "restore it from a backup, or recover it "
                                  "with: sqlite3 %s .recover | sqlite3 %s.recovered and move "
                                  "that in its place" % (path, path))
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
        if "pending" not in columns:  # registries made before provisioning existed
            self._db.execute("ALTER TABLE devices ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")
        self._version: Optional[int] = None  # None: the copy must be read again
        self.devices: Dict[str, Device] = {}  # token -> live device, as of the last refresh

    def close(self) -> None:
        self._db.close()

    def reachable(self) -> bool:
        """True when the registry answers a query (the readiness probe asks)."""
        try:
            self._db.execute("PRAGMA data_version").fetchall()
        except sqlite3.Error:
            return False
        return True

    # -- the bridge's view --------------------------------------------------

    def refresh(self) -> bool:
        """Bring ``devices`` up to date with the file (one ``PRAGMA data_version`` query, and
        a reload when another connection or this one changed it); True when it changed.

        ``devices`` is one dict, updated in place, so a reference to it (or to its
        ``get``) stays a live view: the bridge refreshes it once per reactor turn, before
        the requests of that turn are handled, and the core reads it as plain data."""
        version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
        if version == self._version:
            return False
        rows = self._db.execute("SELECT token, name, type FROM devices "
                                "WHERE deleted = 0 AND pending = 0")
        devices = {token_: Device(name, type_) for token_, name, type_ in rows}
        self.devices.clear()
        self.devices.update(devices)
        self._version = version
        return True

    def lookup(self, token: str) -> Optional[Device]:
        """The live device for ``token``, or None (unknown or deleted), read from the file."""
        self.refresh()
        return self.devices.get(token)

    def rename(self, old: str, new: str) -> bool:
        if not new or not new.strip():
            raise RegistryError("device name must not be empty")
        try:
            with self._transaction():
                cursor = self._db.execute("UPDATE devices SET name = ? WHERE name = ?", (new, old))
        except sqlite3.IntegrityError:
            raise RegistryError("cannot rename %r: a device named %r already exists" % (old, new))
        self._version = None
        return cursor.rowcount > 0

    def mark_deleted(self, name: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("UPDATE devices SET deleted = 1 WHERE name = ?", (name,))
        self._version = None
        return cursor.rowcount > 0

    def provision(self, name: str, token: str, device_type: str, strategy: str) -> bool:
        """Local provisioning: give ``name`` the access ``token``; False is ThingsBoard's FAILURE.

        ``create_new`` adds a device that must not exist yet; ``pre_provisioned`` only
        activates a device added with ``pending`` (once). A token in use elsewhere fails.
        """
        _validate(name, token, device_type)
        try:
            with self._transaction():
                rows = self._db.execute("SELECT pending, type FROM devices WHERE name = ?",
                                        (name,)).fetchall()
                row = rows[0] if rows else None
                if strategy == "create_new":
                    if row is not None:
                        return False
                    self._db.execute("INSERT INTO devices (name, token, type) VALUES (?, ?, ?)",
                                     (name, token, device_type))
                else:
                    if row is None or not row[0]:
                        return False
                    self._db.execute("UPDATE devices SET token = ?, pending = 0 WHERE name = ?",
                                     (token, name))
        except sqlite3.IntegrityError:
            return False
        self._version = None
        return True

    def store_credentials(self, name: str, token: str, device_type: str) -> None:
        """Upstream provisioning succeeded: ``name`` now authenticates with ``token``."""
        _validate(name, token, device_type)
        try:
            with self._transaction():
                self._db.execute("DELETE FROM devices WHERE token = ? AND name != ?", (token, name))
                self._db.execute(
                    "INSERT INTO devices (name, token, type) VALUES (?, ?, ?) ON CONFLICT(name) "
                    "DO UPDATE SET token = excluded.token, pending = 0, deleted = 0",
                    (name, token, device_type))
        except sqlite3.IntegrityError as exc:
            raise RegistryError(_integrity(exc))
        self._version = None

    # -- the operator's commands --------------------------------------------

    def add(self, name: str, token: str, device_type: str, pending: bool = False) -> Entry:
        _validate(name, token, device_type)
        try:
            with self._transaction():
                self._db.execute("INSERT INTO devices (name, token, type, pending) "
                                 "VALUES (?, ?, ?, ?)", (name, token, device_type, int(pending)))
        except sqlite3.IntegrityError:
            raise RegistryError(self._conflict(name, token))
        self._version = None
        return Entry(name, token, device_type)

    def remove(self, name: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM devices WHERE name = ?", (name,))
        self._version = None
        return cursor.rowcount > 0

    def entries(self) -> List[Entry]:
        rows = self._db.execute("SELECT name, token, type, deleted, pending FROM devices "
                                "ORDER BY name")
        return [Entry(name, token, type_, bool(deleted), bool(pending))
                for name, token, type_, deleted, pending in rows]

    def import_rows(self, rows: Iterable[Tuple[str, str, str]]) -> int:
        """Add every row in one transaction; nothing is added if any row is bad."""
        rows = list(rows)
        problems = []
        for number, (name, token, device_type) in enumerate(rows, 1):
            try:
                _validate(name, token, device_type)
            except RegistryError as exc:
                problems.append("row %d: %s" % (number, exc))
        if problems:
            raise RegistryError("; ".join(problems))
        try:
            with self._transaction():
                self._db.executemany("INSERT INTO devices (name, token, type) VALUES (?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            raise RegistryError("import refused, nothing added: %s" % _integrity(exc))
        self._version = None
        return len(rows)

    def _conflict(self, name: str, token: str) -> str:
        if self._db.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchall():
            return "a device named %r already exists" % name
        return "that token already belongs to another device"

    def _transaction(self) -> Transaction:
        return Transaction(self._db)


def _integrity(exc: sqlite3.IntegrityError) -> str:
    text = str(exc)
    if "devices.token" in text:
        return "a token is already used by another device"
    if "devices.name" in text:
        return "a device name already exists"
    return text


def _validate(name: str, token: str, device_type: str) -> None:
    if not name or not name.strip():
        raise RegistryError("device name must not be empty")
    if not token or any(c in token for c in "/?#") or any(c.isspace() for c in token):
        raise RegistryError("token must be non-empty and contain no '/', '?', '#' or spaces")
    if not device_type:
        raise RegistryError("device type must not be empty")


def read_csv(path: str, default_type: str) -> List[Tuple[str, str, str]]:
    """Rows ``name,token[,type]``; a first row ``name,token[,type]`` is a header."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if number == 1 and [cell.lower() for cell in cells[:2]] == ["name", "token"]:
                continue
            if len(cells) not in (2, 3):
                raise RegistryError("%s line %d: expected name,token[,type]" % (path, number))
            device_type = cells[2] if len(cells) == 3 and cells[2] else default_type
            rows.append((cells[0], cells[1], device_type))
    return rows
