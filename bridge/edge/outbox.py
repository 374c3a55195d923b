"""The durable outbox: every acknowledged uplink, in SQLite (WAL), until the broker's PUBACK.

Writes are grouped: all uplinks that arrive in one turn of the reactor are
committed in one transaction (group commit), then their devices get 2.01.
``synchronous`` is FULL by default, so a commit survives a power cut, not
only a killed process. Entries the platform refuses are moved to
``dead_letters`` with the reason. The file is created with mode 0600.

Ids are given by the outbox inside the write transaction and never reused, also
after the newest entries were delivered: ``outbox_sequence`` keeps the next one,
updated once per write. (Files made by earlier versions declared the id
AUTOINCREMENT, which made every insert update ``sqlite_sequence``; their
highest id there is respected.)

A file SQLite cannot read (not a database, damaged pages) is never deleted nor
overwritten: it is renamed to ``outbox.sqlite3.corrupt-<UTC time>`` with its
WAL, and opening fails with one line that says so (docs/reliability.md says
how to recover its entries); the next start begins with an empty outbox.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain
from typing import Callable, Iterable, List, Sequence, Tuple

from ..core.actions import Entry
from ..sqlite import CorruptDatabase, Transaction, open_database, set_aside

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    device      TEXT NOT NULL,
    device_type TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    device      TEXT NOT NULL,
    device_type TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created     REAL NOT NULL,
    failed      REAL NOT NULL,
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_sequence (
    next_id     INTEGER NOT NULL
);
"""

class Outbox:
    def __init__(self, path: str, synchronous: str = "FULL"):
        """Raises ``StartupError`` (one line naming the file) if the file cannot be used."""
        self.path = path
        # removals alone are committed without a sync to disk (see ``write``)
        self._full_sync = synchronous.upper() != "NORMAL"
        try:
            self._db = open_database(path, _SCHEMA, synchronous)
        except CorruptDatabase as exc:
            try:
                moved = set_aside(path)
            except OSError as error:
                raise CorruptDatabase(path, exc.reason, "could not move it aside (%s): stop "
                                      "the bridge, move it away yourself and recover its "
                                      "entries as docs/reliability.md says"
                                      % error.strerror)
            raise CorruptDatabase(path, exc.reason, "moved it to %s with the uplinks it holds, "
                                  "nothing was deleted; recover them as docs/reliability.md "
                                  "says; the next start begins with an empty outbox" % moved)
        self._db.execute("INSERT INTO outbox_sequence SELECT 1 "
                         "WHERE NOT EXISTS (SELECT 1 FROM outbox_sequence)")
        self._sequence = bool(self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchall())

    def close(self) -> None:
        self._db.close()

    def append(self, entries: Sequence[Entry]) -> List[int]:
        """Store ``entries`` in one transaction and return their ids, in order."""
        return self.write(entries, (), (), 0.0)

    def write(self, entries: Sequence[Entry], deletes: Sequence[int],
              dead: Sequence[Tuple[int, str]], now: float) -> List[int]:
        """One transaction (one sync to disk): store ``entries`` (each under a new id: the
        id they carry is not read) and return their ids, in order; remove the entries
        ``deletes``; move ``dead`` (id, reason) to dead letters.

        A transaction that stores nothing (removals, dead letters) is committed without
        the sync to disk (``synchronous=NORMAL`` for it): a power cut may undo it, and
        the entries it removed are then sent again (at least once), and the next
        transaction that stores uplinks syncs it with its own (the WAL is one file,
        synced to its end). A sync costs the process some 60 µs of CPU here."""
        if not entries and self._full_sync:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._write(entries, deletes, dead, now)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            return []
        return self._write(entries, deletes, dead, now)

    def _write(self, entries: Sequence[Entry], deletes: Sequence[int],
               dead: Sequence[Tuple[int, str]], now: float) -> List[int]:
        with Transaction(self._db):
            ids: List[int] = []
            if entries:
                # ids are ours to give: the transaction holds the write lock
                first = self._next_id()
                ids = list(range(first, first + len(entries)))
                self._insert(first, entries)
                self._db.execute("UPDATE outbox_sequence SET next_id = ?",
                                 (first + len(entries),))
            if deletes:
                ranges = _ranges(deletes)
                if len(ranges) == 1:
                    self._db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", ranges[0])
                else:
                    self._db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?",
                                         ranges)
            if dead:
                self._dead_letter(dead, now)
        return ids

    def _insert(self, first: int, entries: Sequence[Entry]) -> None:
        # one INSERT of many rows per chunk: a third cheaper per row than executemany,
        # which steps and resets one statement per row. The entries are the parameters
        # as they are (see _insert_sql), after the chunk's first id.
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start:start + _CHUNK]
            params: List[object] = [first + start]
            params.extend(chain.from_iterable(chunk))
            self._db.execute(_insert_sql(len(chunk)), params).fetchall()

    def _next_id(self) -> int:
        # fetchall everywhere: PyPy's sqlite3 keeps a half-read statement open, and an
        # open statement makes COMMIT fail
        top = self._db.execute(
            "SELECT max((SELECT next_id FROM outbox_sequence), "
            "(SELECT coalesce(max(id), 0) + 1 FROM outbox), "
            "(SELECT coalesce(max(id), 0) + 1 FROM dead_letters))").fetchall()[0][0]
        if self._sequence:  # a file from a version with AUTOINCREMENT
            seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                                   ).fetchall()
            top = max(top, seq[0][0] + 1 if seq else 1)
        return top

    def delete(self, ids: Iterable[int]) -> None:
        self.write((), list(ids), (), 0.0)

    def _dead_letter(self, items: Iterable[Tuple[int, str]], now: float) -> None:
        for entry_id, reason in items:
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letters SELECT id, device, device_type, topic, "
                "payload, created, ?, ? FROM outbox WHERE id = ?", (now, reason, entry_id))
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def rename(self, old: str, new: str, rewrite: Callable[[str, bytes], bytes]) -> int:
        """Entries of device ``old`` now belong to ``new``; ``rewrite(topic, payload)``."""
        rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE device = ?",
                                (old,)).fetchall()
        with Transaction(self._db):
            for entry_id, topic, payload in rows:
                self._db.execute("UPDATE outbox SET device = ?, payload = ? WHERE id = ?",
                                 (new, rewrite(topic, bytes(payload)), entry_id))
        return len(rows)

    def load_slice(self, after: int, rows: int, size: int) -> List[Entry]:
        """The entries after id ``after`` in id order: ``rows`` at most, and no more once
        their payloads reach ``size`` bytes (at least one)."""
        cursor = self._db.execute("SELECT id, device, device_type, topic, payload, created "
                                  "FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, rows))
        entries: List[Entry] = []
        total = 0
        try:
            while total < size:
                chunk = cursor.fetchmany(256)
                if not chunk:
                    break
                for i, d, t, topic, p, c in chunk:
                    if isinstance(p, str):
                        p = p.encode()
                    if not isinstance(p, bytes) or not isinstance(d, str):
                        raise CorruptDatabase(self.path, "entry %d is damaged" % i)
                    entries.append(Entry(i, d, t, topic, p, c))
                    total += len(p)
                    if total >= size:
                        break
        finally:
            cursor.close()
        return entries

    def stats(self) -> Tuple[int, int]:
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchall()[0]
        return count, size

    def dead_letters(self) -> List[Tuple[int, str, str, bytes, float, str]]:
        rows = self._db.execute("SELECT id, device, topic, payload, failed, reason "
                                "FROM dead_letters ORDER BY id")
        return [(i, d, t, bytes(p), f, r) for i, d, t, p, f, r in rows]


_CHUNK = 32  # rows per INSERT: 193 parameters, under SQLite's oldest limit of 999


@lru_cache(maxsize=_CHUNK)
def _insert_sql(count: int) -> str:
    """The INSERT of ``count`` entries: parameter 1 is the first id, then come the six
    fields of each entry; the id an entry carries (not stored yet: 0) is not read, its
    row gets the first id plus its place in the chunk."""
    rows = []
    for n in range(count):
        base = 2 + 6 * n  # this entry's id field, unused
        rows.append("(?1 + %d, %s)" % (n, ", ".join("?%d" % (base + k) for k in range(1, 6))))
    return ("INSERT INTO outbox (id, device, device_type, topic, payload, created) VALUES "
            + ", ".join(rows))


def _ranges(ids: Sequence[int]) -> List[Tuple[int, int]]:
    """``ids`` as few (first, last) runs of consecutive ids: one statement deletes a run."""
    runs: List[Tuple[int, int]] = []
    ordered = sorted(ids)
    start = end = ordered[0]
    for entry_id in ordered[1:]:
        if entry_id != end + 1:
            runs.append((start, end))
            start = entry_id
        end = entry_id
    runs.append((start, end))
    return runs
