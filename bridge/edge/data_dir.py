"""One bridge per DATA_DIR, whatever its worker count: an exclusive lock on ``DATA_DIR/bridge.lock``.

Each process also holds its own outbox file (``bridge.edge.outbox_files``), which
refuses a second bridge of the same kind; but a single-process bridge owns
``outbox.sqlite3`` and a supervised one ``outbox-w1.sqlite3``..., so those locks
never meet, and a 2-worker bridge started beside a single one (or the other way
round) ran fully, the two delivering and taking over each other's files. The
single process, or the supervisor of the workers, therefore takes this lock first,
before any file of DATA_DIR is opened, and holds it while it runs (its workers do
not: they run under it). The file says who holds it (pid, worker count), so the
refusal names the bridge in the way. An ``flock`` ends with its process, also
when it is killed: a stale file never blocks a start.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

from ..settings import StartupError

NAME = "bridge.lock"


class DataDirLock:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, NAME)
        self.fd: Optional[int] = None

    def acquire(self, workers: int) -> None:
        """Hold the lock for this process (``workers``: 1, or the supervisor's count), or
        raise ``StartupError`` with one line: another bridge holds it, or DATA_DIR cannot
        be used."""
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError("cannot open %s: %s; DATA_DIR (%s) must be a directory this "
                               "user can write (set data_dir or DATA_DIR)"
                               % (self.path, exc.strerror or exc, self.data_dir))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StartupError("DATA_DIR %s is in use by another bridge%s: stop it, or give "
                               "this one its own data_dir (DATA_DIR)"
                               % (self.data_dir, " (%s)" % holder if holder else ""))
        os.ftruncate(fd, 0)
        os.write(fd, ("pid %d, %s\n" % (os.getpid(), "a single process" if workers <= 1
                                         else "%d worker processes" % workers)).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # releases the flock; the file stays (it says nothing once free)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
