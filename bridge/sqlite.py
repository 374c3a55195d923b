"""SQLite helpers shared by the registry and the outbox: private files, WAL, transactions."""

from __future__ import annotations

import os
import sqlite3
from typing import Any


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


class Transaction:
    """``with Transaction(db):`` runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
