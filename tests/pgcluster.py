"""A private PostgreSQL cluster for the tests: initdb and pg_ctl on a free port in a temp dir.

Debian's ``postgresql`` package (scripts/install.sh system --test) puts the server
programs in /usr/lib/postgresql/<version>/bin; ``PG_BINDIR`` overrides. pg_ctl
refuses to run as root, so as root the cluster belongs to the ``postgres`` user
(its directory is chowned to it and every server command runs through
``runuser``). The superuser has a password and TCP connections must give it
(scram-sha-256), so the bridge's password handling is exercised too.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import List, Optional

PASSWORD = "pg-test-secret"
_names = itertools.count(1)


def bindir() -> Optional[str]:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2]
                         .isdigit() else 0, reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(os.path.dirname(found))
    for folder in candidates:
        if folder and all(os.access(os.path.join(folder, tool), os.X_OK)
                          for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, bin_dir: str):
        self.bin = bin_dir
        self.root = tempfile.mkdtemp(prefix="coapbridge-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = _free_port()
        self.user: Optional[str] = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)  # KeyError: no postgres user (the package makes it)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o755)

    def _run(self, *args: str) -> None:
        command: List[str] = list(args)
        if self.user:
            command = ["runuser", "-u", self.user, "--"] + command
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=120)
        if result.returncode:
            raise RuntimeError("%s failed: %s" % (" ".join(args), result.stdout.decode()[-2000:]))

    def init(self) -> "Cluster":
        pwfile = os.path.join(self.root, "pwfile")
        with open(pwfile, "w") as handle:
            handle.write(PASSWORD + "\n")
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                  "--pwfile", pwfile, "--auth-host=scram-sha-256", "--auth-local=trust",
                  "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--no-locale")
        os.remove(pwfile)
        return self

    def start(self) -> "Cluster":
        options = ("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100" % (self.port, self.root))
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
                  "-t", "60", "-o", options, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w",
                      "stop")

    def pids(self) -> List[int]:
        """The postmaster and every process it started (the backends, the checkpointer...)."""
        with open(os.path.join(self.data, "postmaster.pid")) as handle:
            postmaster = int(handle.readline())
        found = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/stat" % entry) as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # ended meanwhile
                if int(fields[1]) == postmaster:
                    found.append(int(entry))
        return found

    def freeze(self) -> None:
        """Stop every server process (SIGSTOP): alive to the kernel, which still accepts
        connections and acknowledges packets, but nothing answers: a hung server."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self.thaw()  # a test that failed with the server frozen
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: bool = True) -> str:
        secret = ":" + PASSWORD if password else ""
        return "postgresql://postgres%s@127.0.0.1:%d/%s" % (secret, self.port, database)

    def create_database(self) -> str:
        """A new empty database; its URL (with the password)."""
        import psycopg
        name = "t%d_%d" % (os.getpid(), next(_names))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return self.url(name)


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], stdout=subprocess.PIPE, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip().lower() in (b"c.utf8", b"c.utf-8") for line in out.splitlines())
