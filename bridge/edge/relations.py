"""The observe relations of one process, kept in DATA_DIR for the process that follows it.

A worker killed with ``kill -9`` (or a bridge that crashed or was restarted) took its
observe relations with it, while the devices still hold theirs: they wait for
notifications that never come, and the clients we test with (libcoap's ``coap-client
-s``, aiocoap) never register again by themselves. So each process keeps its relations
in a file of its own, ``DATA_DIR/observers.sqlite3`` (the single process) or
``observers-w1.sqlite3``... (worker K, beside its ``outbox-wK.sqlite3``), and the
next process with the same number takes them over at start
(``bridge/glue/relations.py``).

The file is written when a relation begins or ends (registration, deregistration,
replacement, rename, reset, timeout), all changes of a reactor turn in one transaction,
never per notification. SQLite (WAL, ``synchronous=NORMAL``: a commit survives the
process being killed, which is the case this is for; an operating system crash may lose
the last changes, and then the devices are where they were before this file existed).
Only relations over plain UDP are kept: a DTLS session's keys die with its process, and
an RFC 8323 connection closes with it (its device sees the connection end).

``shape`` records what the relations depend on besides the device: the worker count
and the CoAP address and port. Under another shape a device's datagrams reach another
worker (``SO_REUSEPORT`` hashes over another set of sockets), so the relations cannot
go on; the glue ends them (an error notification each) instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from .. import sqlite
from ..logs import logger

log = logger("observe")

NAME = re.compile(r"^observers(?:-w([1-9][0-9]*))?\.sqlite3$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS relations (
    device TEXT NOT NULL,
    feature TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    token BLOB NOT NULL,
    confirmable INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    PRIMARY KEY (device, feature)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shape (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    text TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Kept:
    """One relation as kept: its device and resource, the device's endpoint, the
    registration's token and type (CON or NON), the block size it asked for."""

    device: str
    feature: str
    host: str
    port: int
    token: bytes
    confirmable: bool
    block_size: int


def path_of(data_dir: str, worker: int) -> str:
    """The file of worker ``worker`` (0: the single process)."""
    name = "observers-w%d.sqlite3" % worker if worker else "observers.sqlite3"
    return os.path.join(data_dir, name)


def shape_of(workers: int, address: str, port: int) -> str:
    return "workers=%d coap=%s:%d" % (workers, address, port)


def others(data_dir: str, workers: int) -> List[str]:
    """The relation files in ``data_dir`` that no process of ``workers`` workers owns."""
    try:
        names = os.listdir(data_dir)
    except OSError:
        return []
    mine = ({"observers.sqlite3"} if workers <= 1 else
            {"observers-w%d.sqlite3" % n for n in range(1, workers + 1)})
    return [os.path.join(data_dir, name) for name in sorted(names)
            if NAME.match(name) and name not in mine]


class RelationFile:
    """The relations of one process (see the module docstring). Every method raises
    ``sqlite3.Error`` (or ``OSError``) when the file cannot be used."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.db = sqlite.open_database(path, SCHEMA, "NORMAL")
        except sqlite.CorruptDatabase as exc:
            moved = sqlite.set_aside(path)
            log.warn("{path} is damaged ({reason}): set aside as {moved}; the relations it "
                     "held are not taken over", path=path, reason=exc.reason, moved=moved)
            self.db = sqlite.open_database(path, SCHEMA, "NORMAL")

    def shape(self) -> Optional[str]:
        row = self.db.execute("SELECT text FROM shape WHERE id = 1").fetchone()
        return row[0] if row is not None else None

    def load(self) -> List[Kept]:
        rows = self.db.execute("SELECT device, feature, host, port, token, confirmable, "
                               "block_size FROM relations ORDER BY device, feature")
        return [Kept(d, f, h, p, bytes(t), bool(c), b) for d, f, h, p, t, c, b in rows]

    def write(self, kept: Iterable[Kept], ended: Iterable[Tuple[str, str]],
              shape: str) -> None:
        """One transaction: the relations that began (or changed) and those that ended."""
        with sqlite.Transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO shape (id, text) VALUES (1, ?)", (shape,))
            self.db.executemany("DELETE FROM relations WHERE device = ? AND feature = ?",
                                list(ended))
            self.db.executemany(
                "INSERT OR REPLACE INTO relations VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k.device, k.feature, k.host, k.port, k.token, int(k.confirmable),
                  k.block_size) for k in kept])

    def clear(self, shape: str) -> None:
        """Forget every relation (they were ended, or taken over under ``shape``)."""
        with sqlite.Transaction(self.db):
            self.db.execute("DELETE FROM relations")
            self.db.execute("INSERT OR REPLACE INTO shape (id, text) VALUES (1, ?)", (shape,))

    def close(self) -> None:
        self.db.close()


def remove(path: str) -> None:
    """Delete a relation file and its WAL side files (an emptied leftover)."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass

