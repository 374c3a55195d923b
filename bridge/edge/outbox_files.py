"""The outbox files of one DATA_DIR: each held by one process, none left behind.

One process is ``outbox.sqlite3``; workers 1..N of a supervised bridge are
``outbox-w1.sqlite3``... When the worker count changes (2 to 1, 3 to 2, 1 to
2), some of those files belong to no process any more and may still hold
acknowledged uplinks: the single process, or worker 1, takes their entries over
at start (``adopt_leftovers``) before it replays its own outbox, so they are
delivered. An entry is appended to the new file before it is deleted from the
old one, chunk by chunk: a crash in between delivers that chunk twice, never
loses it (at-least-once, as everywhere). A file that still holds dead letters
is kept (``coapbridge`` never deletes them); an emptied one is removed.

Each process holds an exclusive ``flock`` on its outbox file while it runs
(``OutboxLock``): a second bridge started on the same DATA_DIR is refused
with one line instead of writing the same file, and ``adopt_leftovers`` skips
a file some running process still holds. (``flock`` locks are apart from the
POSIX locks SQLite takes; the descriptor is closed only after SQLite's
connection, so SQLite's own locks are never dropped by it.)
"""

from __future__ import annotations

import fcntl
import os
import re
from typing import List, Optional, Set

from ..settings import StartupError
from ..logs import logger
from .outbox import Outbox

log = logger("outbox")

NAME = re.compile(r"^outbox(?:-w([1-9][0-9]*))?\.sqlite3$")
CHUNK_ROWS = 1000
CHUNK_BYTES = 8 * 1024 * 1024


class OutboxLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (which must exist)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # releases the flock


def hold(outbox: Outbox) -> OutboxLock:
    """Lock ``outbox``'s file for this process, or raise ``StartupError``."""
    lock = OutboxLock(outbox.path)
    if not lock.acquire():
        raise StartupError("the outbox %s is in use by another process (another bridge with "
                           "the same DATA_DIR?): stop it, or give this one its own data_dir "
                           "(DATA_DIR)" % outbox.path)
    return lock


def owned_names(workers: int) -> Set[str]:
    if workers <= 1:
        return {"outbox.sqlite3"}
    return {"outbox-w%d.sqlite3" % n for n in range(1, workers + 1)}


def leftovers(data_dir: str, workers: int) -> List[str]:
    """The outbox files in ``data_dir`` that no process of ``workers`` workers owns."""
    try:
        names = os.listdir(data_dir)
    except OSError:
        return []
    mine = owned_names(workers)
    return [os.path.join(data_dir, name) for name in sorted(names)
            if NAME.match(name) and name not in mine]


def adopt_leftovers(outbox: Outbox, data_dir: str, workers: int,
                    synchronous: str = "full") -> int:
    """Move the entries of every leftover outbox file into ``outbox``; return how many."""
    moved = 0
    for path in leftovers(data_dir, workers):
        lock = OutboxLock(path)
        try:
            if not lock.acquire():
                log.warn("Outbox {path} is held by a running process: left alone", path=path)
                continue
            moved += _adopt(outbox, path, synchronous)
        except (OSError, StartupError) as exc:
            log.error("Could not take over the outbox {path}: {error}", path=path,
                      error=str(exc))
        finally:
            lock.release()
    return moved


def _adopt(outbox: Outbox, path: str, synchronous: str) -> int:
    old = Outbox(path, synchronous)
    moved = 0
    try:
        while True:
            entries = old.load_slice(0, CHUNK_ROWS, CHUNK_BYTES)
            if not entries:
                break
            outbox.append(entries)  # stored here first, then removed there
            old.delete([entry.id for entry in entries])
            moved += len(entries)
        dead = len(old.dead_letters())
    finally:
        old.close()
    if moved:
        log.info("Took over {count:plural:uplink} from {path} (the worker count changed)",
                 count=moved, path=path, into=outbox.path)
    if dead:
        log.warn("Kept {path}: it holds {count:plural:dead letter}", path=path, count=dead)
    else:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return moved
