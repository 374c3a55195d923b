"""SQLite helpers shared by the registry and the outbox: private files, WAL, transactions.

``open_database`` turns what can go wrong when a file is opened into one
``StartupError`` line that names the file: DATA_DIR missing or not writable
(``UnwritableDatabase``), or a file SQLite cannot read (``CorruptDatabase``:
not a database, or damaged pages found by ``PRAGMA quick_check``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from .settings import StartupError


class UnwritableDatabase(StartupError):
    pass


class CorruptDatabase(StartupError):
    def __init__(self, path: str, reason: str, advice: str = ""):
        super().__init__("%s is damaged (%s)%s" % (path, reason, ": " + advice if advice else ""))
        self.path = path
        self.reason = reason


def create_private(path: str) -> None:
    """Create ``path`` (and its folder) readable by the owner only, if it does not exist."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def connect(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL; the WAL side files are kept private too."""
    create_private(path)
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL").fetchall()
    db.execute("PRAGMA synchronous=%s" % ("NORMAL" if synchronous.upper() == "NORMAL" else "FULL"))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o600)
    return db


def open_database(path: str, schema: str, synchronous: str = "FULL") -> sqlite3.Connection:
    """``connect`` and create ``schema``, after checking that every page of the file reads.

    Raises ``UnwritableDatabase`` or ``CorruptDatabase`` (both one line naming ``path``)."""
    db = None
    try:
        db = connect(path, synchronous)
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise CorruptDatabase(path, "; ".join(_one_line(p) for p in problems))
        db.executescript(schema)
        return db
    except OSError as exc:
        raise UnwritableDatabase(_unwritable(path, exc.strerror or str(exc)))
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and not _damaged(text):
            raise UnwritableDatabase(_unwritable(path, text))
        raise CorruptDatabase(path, _one_line(text))
    except CorruptDatabase:
        if db is not None:
            db.close()
        raise


def _one_line(problem: Any) -> str:
    return " ".join(str(problem).replace("*** in database main ***", "").split())


def _damaged(text: str) -> bool:
    return any(words in text for words in ("not a database", "malformed", "corrupt"))


def _unwritable(path: str, reason: str) -> str:
    return ("cannot open %s: %s; DATA_DIR (%s) must be a directory this user can write "
            "(set data_dir or DATA_DIR)" % (path, reason, os.path.dirname(path) or "."))


def set_aside(path: str) -> str:
    """Rename ``path`` and its WAL side files to ``path.corrupt-<UTC time>`` (nothing is
    deleted: SQLite finds the WAL next to the renamed file); return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    new = "%s.corrupt-%s" % (path, stamp)
    attempt = 1
    while any(os.path.exists(new + suffix) for suffix in ("", "-wal", "-shm")):
        attempt += 1  # never overwrite a file set aside before
        new = "%s.corrupt-%s-%d" % (path, stamp, attempt)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, new + suffix)
    return new


class Transaction:
    """``with Transaction(db):`` runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error.

    The error that ended the transaction is the one raised: SQLite rolls a transaction
    back by itself after some errors (SQLITE_FULL, "database or disk is full", among
    them), and a ROLLBACK then fails with "cannot rollback - no transaction is active",
    which would hide the real cause from the operator. So the ROLLBACK is only sent while
    a transaction is open, and its own failure never replaces the first one. A COMMIT
    that fails (the disk filled while writing the WAL) is rolled back the same way."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if not self.db.in_transaction:
            return  # SQLite ended it already
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error that brought us here is the one the caller must see
