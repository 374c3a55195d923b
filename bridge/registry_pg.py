"""The device registry in PostgreSQL (psycopg 3 and its pool), shared by several bridges.

``PgRegistry`` has every operation of the SQLite ``Registry`` (the operator's
commands, provisioning's writes, the platform's renames and deletes) with the
same answers and the same ``RegistryError`` messages, and the same columns
(tokens, certificate and PSK credentials, ``deleted``, ``pending``). Its calls
block: the CLI uses it directly; a running bridge only through
``bridge.edge.shared_registry``, which runs them in a thread pool and keeps
the in-memory copy the core reads.

The schema is created and migrated when a registry opens, under an advisory
lock (two bridges starting at once do not race). A statement trigger sends
``NOTIFY coapbridge_registry`` on every change to ``devices``, whoever makes
it (a bridge, the CLI, ``psql``): the bridges LISTEN and reload their copy
(``listen`` / ``wait_for_change`` / ``load``). A lost connection is
``RegistryUnavailable``.

Every call has a deadline. libpq's own bound each new connection (``connect_timeout``)
and a dead network (TCP keepalives while idle, ``tcp_user_timeout`` while data waits
for an acknowledgement), and the server cancels a statement past ``statement_timeout``
(``QUERY_TIMEOUT``; a lock waited for past ``lock_timeout``). None of them notices a
server that is alive to the kernel but never answers (stopped with SIGSTOP, swapping,
frozen): its kernel still acknowledges every packet and nobody runs the timeout. So
each call also runs under ``deadline``: past it, the connection's socket is shut down
from a timer thread, which wakes psycopg's wait on it with libpq's "server closed the
connection" (psycopg's blocking API has no timeout of its own for a query, and a cancel
request needs the very server that does not answer), and the call fails with
``Hung``, an ``OperationalError`` like any lost connection.

``apply_changes`` applies the platform's journaled renames and deletes
(``bridge.edge.registry_journal``) in one transaction, each key once
(``platform_changes``), each change whatever state it finds: a device another bridge
renamed or deleted already, or that is gone, is left as it is.

CPython only: psycopg's pure-Python libpq binding (the one PyPy would use) trips
over a ctypes bug of Debian bookworm's PyPy 7.3.11 (PyPy issue 3882: a
``py_object`` of a weak reference), so the PostgreSQL registry is refused there
at configuration time (``bridge.startup_checks``), and SQLite remains.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from . import registry_power
from .settings import StartupError
from .core.actions import Device, PowerSettings
from .core.platform_changes import (APPLIED, DUPLICATE, REFUSED, RENAME, UNKNOWN, Applied,
                                    Change)
from .registry import (DeviceRow, Entry, RegistryError, RegistryUnavailable, _checked_power,
                       _entry, _validate, check_name, entry_of, import_entries)

CHANNEL = "coapbridge_registry"
CONNECT_TIMEOUT = 5  # seconds, for each new connection
QUERY_TIMEOUT = 10.0  # s: statement_timeout on the server; the client's deadline 1 s later
LOCK_KEY = 0x636F6170  # pg_advisory_xact_lock key of the schema migration ("coap")
CHANGES_KEPT_DAYS = 30  # applied platform changes remembered (each key applied once)
# keepalives: an idle connection behind a dead network link is noticed in about 25 s;
# tcp_user_timeout: one with data unacknowledged for 15 s is given up
_OPTIONS = dict(connect_timeout=CONNECT_TIMEOUT, keepalives=1, keepalives_idle=10,
                keepalives_interval=5, keepalives_count=3, tcp_user_timeout=15000,
                application_name="coapbridge")
_TIMEOUTS = "SET %sstatement_timeout = %d; SET %slock_timeout = %d"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS devices (
        name    TEXT PRIMARY KEY,
        token   TEXT UNIQUE,
        type    TEXT NOT NULL,
        deleted BOOLEAN NOT NULL DEFAULT false,
        pending BOOLEAN NOT NULL DEFAULT false
    )""",
    # migrations: every column added since the first release, each once
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS pending BOOLEAN NOT NULL DEFAULT false",
    "ALTER TABLE devices ALTER COLUMN token DROP NOT NULL",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert_sha3 TEXT UNIQUE",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert_pem TEXT",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS psk_identity TEXT UNIQUE",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS psk_key BYTEA",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS power_mode TEXT",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS psm_activity_timer BIGINT",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS edrx_cycle BIGINT",
    "ALTER TABLE devices ADD COLUMN IF NOT EXISTS paging_transmission_window BIGINT",
    """CREATE OR REPLACE FUNCTION coapbridge_registry_changed() RETURNS trigger
       LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('%s', ''); RETURN NULL; END $$"""
    % CHANNEL,
    "DROP TRIGGER IF EXISTS devices_changed ON devices",
    """CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
       FOR EACH STATEMENT EXECUTE FUNCTION coapbridge_registry_changed()""",
    # the platform's changes applied from the bridges' journals: each key once
    """CREATE TABLE IF NOT EXISTS platform_changes (
        key      TEXT PRIMARY KEY,
        kind     TEXT NOT NULL,
        name     TEXT NOT NULL,
        new_name TEXT,
        received TIMESTAMPTZ NOT NULL,
        applied  TIMESTAMPTZ NOT NULL DEFAULT now(),
        outcome  TEXT NOT NULL DEFAULT ''
    )""",
]
LIVE_ROWS = ("SELECT token, name, type, cert_sha3, psk_identity, psk_key, %s FROM devices "
             "WHERE NOT deleted AND NOT pending" % ", ".join(registry_power.COLUMNS))


@dataclass
class Snapshot:
    """The live devices by each credential, as the bridge's lookups want them."""
    devices: Dict[str, Device] = field(default_factory=dict)  # token -> device
    certificates: Dict[str, Device] = field(default_factory=dict)  # cert sha3 -> device
    psk: Dict[str, Tuple[Device, bytes]] = field(default_factory=dict)  # identity -> (dev, key)


def snapshot(rows: Iterable[Tuple[Any, ...]]) -> Snapshot:
    """From rows (token, name, type, cert_sha3, psk_identity, psk_key, the power-saving
    columns) of live devices."""
    result = Snapshot()
    for token, name, type_, cert_sha3, psk_identity, psk_key, *power in rows:
        device = Device(name, type_, registry_power.power_of(power))
        if token:
            result.devices[token] = device
        if cert_sha3:
            result.certificates[cert_sha3] = device
        if psk_identity and psk_key is not None:
            result.psk[psk_identity] = (device, bytes(psk_key))
    return result


def one_line(exc: BaseException) -> str:
    """libpq's message (often several lines, with hints) as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Hung(psycopg.OperationalError):
    """The server did not answer a call within its deadline."""


@contextmanager
def deadline(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """Run the block with a deadline on ``conn``: past ``seconds`` its socket is shut down
    (see the module's docstring) and the block's psycopg error becomes ``Hung``."""
    lock = threading.Lock()
    state = {"done": False, "fired": False}
    fd = conn.pgconn.socket

    def abort() -> None:
        with lock:
            if state["done"]:
                return
            state["fired"] = True
            try:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile: the call is failing by itself
    timer = threading.Timer(seconds, abort)
    timer.daemon = True
    timer.start()
    try:
        yield
    except psycopg.Error as exc:
        if state["fired"]:
            raise Hung("no answer within %g s (the server hangs?)" % seconds) from exc
        raise
    finally:
        with lock:
            state["done"] = True
        timer.cancel()


def connect(conninfo: str, autocommit: bool = False) -> psycopg.Connection:
    """One connection with the bridge's timeouts and keepalives (raises ``psycopg.Error``);
    with ``autocommit`` (the listener's), its session's statement and lock timeouts set."""
    conn = psycopg.connect(conninfo, autocommit=autocommit, **_OPTIONS)
    if autocommit:
        try:
            with deadline(conn, QUERY_TIMEOUT + 1):
                conn.execute(_timeouts(local=False))
        except BaseException:
            conn.close()
            raise
    return conn


def _timeouts(local: bool = True) -> bytes:
    """The statement and lock timeouts (``SET LOCAL``: for one transaction, which a pooler
    in transaction mode keeps apart from other clients' sessions)."""
    scope = "LOCAL " if local else ""
    ms = int(QUERY_TIMEOUT * 1000)
    return (_TIMEOUTS % (scope, ms, scope, ms)).encode()


def migrate(conn: psycopg.Connection) -> None:
    """Create or bring the schema up to date, one migrating connection at a time."""
    with deadline(conn, QUERY_TIMEOUT + 1), conn.transaction():
        conn.execute(_timeouts())
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        for statement in _SCHEMA:
            conn.execute(statement)


def check(conn: psycopg.Connection, seconds: float = QUERY_TIMEOUT) -> None:
    """The pool's check of a connection it hands out (psycopg_pool's, with a deadline)."""
    with deadline(conn, seconds):
        ConnectionPool.check_connection(conn)


# outcomes of a journaled platform change
def apply_changes(conn: psycopg.Connection, changes: Sequence[Change]) -> List[Applied]:
    """Apply ``changes`` in order, in one transaction (a change that cannot be applied is
    refused alone, in its own savepoint); the outcome of each."""
    results = []
    with deadline(conn, QUERY_TIMEOUT + 1), conn.transaction():
        conn.execute(_timeouts())
        for change in changes:
            first = conn.execute(
                "INSERT INTO platform_changes (key, kind, name, new_name, received) VALUES "
                "(%s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT (key) DO NOTHING RETURNING 1",
                (change.key, change.kind, change.name, change.new_name, change.received)
            ).fetchall()
            if not first:
                results.append(Applied(change.id, DUPLICATE))
                continue
            result = _apply_one(conn, change)
            conn.execute("UPDATE platform_changes SET outcome = %s WHERE key = %s",
                         (("%s: %s" % (result.outcome, result.reason)) if result.reason
                          else result.outcome, change.key))
            results.append(result)
        conn.execute("DELETE FROM platform_changes WHERE applied < now() - %s * interval "
                     "'1 day'", (CHANGES_KEPT_DAYS,))
    return results


def _apply_one(conn: psycopg.Connection, change: Change) -> Applied:
    try:
        with conn.transaction():  # a savepoint
            if change.kind == RENAME:
                count = conn.execute("UPDATE devices SET name = %s WHERE name = %s",
                                     (change.new_name, change.name)).rowcount
            else:
                count = conn.execute("UPDATE devices SET deleted = true WHERE name = %s AND "
                                     "NOT deleted", (change.name,)).rowcount
    except errors.UniqueViolation:
        return Applied(change.id, REFUSED, "a device named %r already exists"
                       % change.new_name)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        return Applied(change.id, REFUSED, one_line(exc))
    return Applied(change.id, APPLIED if count else UNKNOWN)


class PgRegistry:
    """The registry at ``conninfo`` (a libpq URI); ``display`` names it in messages."""

    def __init__(self, conninfo: str, display: str, pool_size: int = 1,
                 timeout: float = CONNECT_TIMEOUT):
        """Connects, migrates the schema and opens the pool; raises ``StartupError`` (one
        line naming the registry) when the database cannot be reached or used. A pooled
        connection not had within ``timeout`` seconds is ``RegistryUnavailable``."""
        self.conninfo = conninfo
        self.display = display
        try:
            with connect(conninfo) as conn:  # the first: libpq's own reason when it fails
                migrate(conn)
        except psycopg.Error as exc:
            raise StartupError("cannot use the device registry %s: %s; check REGISTRY_URL "
                               "and that the database is up" % (display, one_line(exc)))
        # min_size 0: connections are made when a write needs one, so a registry that is
        # down is not retried (and logged) by the pool in the background as well
        self.pool = ConnectionPool(conninfo, min_size=0, max_size=max(1, pool_size),
                                   kwargs=_OPTIONS, open=False, timeout=timeout, check=check,
                                   name="coapbridge-registry")
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout:
            self.pool.close()
            raise StartupError("cannot use the device registry %s: no connection within %d s"
                               % (display, CONNECT_TIMEOUT))

    def close(self) -> None:
        self.pool.close()

    def _run(self, work: Any) -> Any:
        """``work(conn)`` in one transaction on a pooled connection."""
        try:
            with self.pool.connection() as conn:
                with deadline(conn, QUERY_TIMEOUT + 1), conn.transaction():
                    conn.execute(_timeouts())
                    return work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise RegistryUnavailable("the device registry %s is unreachable: %s"
                                      % (self.display, one_line(exc)))

    def reachable(self) -> bool:
        try:
            self._run(lambda conn: conn.execute("SELECT 1").fetchall())
        except RegistryUnavailable:
            return False
        return True

    # -- reads -----------------------------------------------------------------------

    def load(self) -> Snapshot:
        return self._run(lambda conn: snapshot(conn.execute(LIVE_ROWS).fetchall()))

    def lookup(self, token: str) -> Optional[Device]:
        """The live device for ``token``, or None (unknown, deleted or pending)."""
        rows = self._run(lambda conn: conn.execute(
            "SELECT name, type, %s FROM devices WHERE token = %%s AND NOT deleted AND NOT "
            "pending" % ", ".join(registry_power.COLUMNS), (token,)).fetchall())
        return Device(rows[0][0], rows[0][1], registry_power.power_of(rows[0][2:])) \
            if rows else None

    def entries(self) -> List[Entry]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT name, token, type, deleted, pending, cert_sha3, cert_pem, psk_identity, "
            "psk_key, %s FROM devices ORDER BY name COLLATE \"C\""
            % ", ".join(registry_power.COLUMNS)).fetchall())
        return [entry_of(row) for row in rows]

    # -- the bridge's writes -----------------------------------------------------------

    def rename(self, old: str, new: str) -> bool:
        check_name(new)
        try:
            count = self._run(lambda conn: conn.execute(
                "UPDATE devices SET name = %s WHERE name = %s", (new, old)).rowcount)
        except errors.UniqueViolation:
            raise RegistryError("cannot rename %r: a device named %r already exists" % (old, new))
        return count > 0

    def mark_deleted(self, name: str) -> bool:
        return self._run(lambda conn: conn.execute(
            "UPDATE devices SET deleted = true WHERE name = %s", (name,)).rowcount) > 0

    def provision(self, name: str, token: str, device_type: str, strategy: str) -> bool:
        """Local provisioning, as ``Registry.provision``: False is ThingsBoard's FAILURE."""
        _validate(name, token, device_type)

        def work(conn: psycopg.Connection) -> bool:
            row = conn.execute("SELECT pending FROM devices WHERE name = %s FOR UPDATE",
                               (name,)).fetchone()
            if strategy == "create_new":
                if row is not None:
                    return False
                conn.execute("INSERT INTO devices (name, token, type) VALUES (%s, %s, %s)",
                             (name, token, device_type))
            else:
                if row is None or not row[0]:
                    return False
                conn.execute("UPDATE devices SET token = %s, pending = false WHERE name = %s",
                             (token, name))
            return True
        try:
            return self._run(work)
        except errors.UniqueViolation:
            return False  # the token is in use, or the name was taken meanwhile

    def store_credentials(self, name: str, token: str, device_type: str) -> None:
        """Upstream provisioning succeeded: ``name`` now authenticates with ``token``."""
        _validate(name, token, device_type)

        def work(conn: psycopg.Connection) -> None:
            conn.execute("DELETE FROM devices WHERE token = %s AND name != %s", (token, name))
            conn.execute(
                "INSERT INTO devices (name, token, type) VALUES (%s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET token = excluded.token, pending = false, deleted = false",
                (name, token, device_type))
        try:
            self._run(work)
        except errors.UniqueViolation as exc:
            raise RegistryError(_unique(exc))

    # -- the operator's commands --------------------------------------------------------

    def add(self, name: str, token: Optional[str], device_type: str, pending: bool = False,
            *, cert_sha3: Optional[str] = None, cert_pem: Optional[str] = None,
            psk_identity: Optional[str] = None, psk_key: Optional[bytes] = None,
            power: Optional[PowerSettings] = None) -> Entry:
        """As ``Registry.add``: any of the credentials, checked the same way."""
        entry = _entry(name, token, device_type, pending, cert_sha3, cert_pem, psk_identity,
                       psk_key, power)
        try:
            self._run(lambda conn: _insert(conn, [entry]))
        except errors.UniqueViolation:
            raise RegistryError(self._conflict(entry))
        return entry

    def _conflict(self, entry: Entry) -> str:
        """Which value of ``entry`` is taken, in the SQLite registry's words and order."""
        def work(conn: psycopg.Connection) -> str:
            if conn.execute("SELECT 1 FROM devices WHERE name = %s", (entry.name,)).fetchall():
                return "a device named %r already exists" % entry.name
            for column, value, what in (
                    ("cert_sha3", entry.cert_sha3, "that certificate is already registered"),
                    ("psk_identity", entry.psk_identity, "that PSK identity already belongs"),
                    ("token", entry.token, "that token already belongs")):
                if value is None:
                    continue
                owner = conn.execute("SELECT name FROM devices WHERE %s = %%s" % column,
                                     (value,)).fetchall()
                if owner:
                    if column == "cert_sha3":  # a certificate is no secret: name its device
                        return "%s, for device %r" % (what, owner[0][0])
                    return what + " to another device"
            return "a value is already used by another device"
        return self._run(work)

    def set_power(self, name: str, power: Optional[PowerSettings]) -> bool:
        """As ``Registry.set_power``."""
        values = registry_power.row_values(_checked_power(power))
        return self._run(lambda conn: conn.execute(
            "UPDATE devices SET %s WHERE name = %%s"
            % ", ".join("%s = %%s" % c for c in registry_power.COLUMNS),
            values + (name,)).rowcount) > 0

    def remove(self, name: str) -> bool:
        return self._run(lambda conn: conn.execute(
            "DELETE FROM devices WHERE name = %s", (name,)).rowcount) > 0

    def import_rows(self, rows: Iterable[Union[DeviceRow, Sequence[str]]]) -> int:
        """Add every row in one transaction; nothing is added if any row is bad."""
        entries = import_entries(rows)
        try:
            self._run(lambda conn: _insert(conn, entries))
        except errors.UniqueViolation as exc:
            raise RegistryError("import refused, nothing added: %s" % _unique(exc))
        return len(entries)


def _insert(conn: psycopg.Connection, entries: Sequence[Entry]) -> None:
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO devices (name, token, type, pending, cert_sha3, cert_pem, "
            "psk_identity, psk_key, %s) VALUES (%s)"
            % (", ".join(registry_power.COLUMNS), ", ".join(["%s"] * 12)),
            [(e.name, e.token, e.type, e.pending, e.cert_sha3, e.cert_pem, e.psk_identity,
              e.psk_key) + registry_power.row_values(e.power) for e in entries])


def _constraint(exc: errors.UniqueViolation) -> str:
    return exc.diag.constraint_name or ""


def _unique(exc: errors.UniqueViolation) -> str:
    constraint = _constraint(exc)
    if constraint == "devices_token_key":
        return "a token is already used by another device"
    if constraint == "devices_pkey":
        return "a device name already exists"
    if constraint == "devices_cert_sha3_key":
        return "a certificate is already registered to another device"
    if constraint == "devices_psk_identity_key":
        return "a PSK identity is already used by another device"
    return constraint or "a value is already used by another device"

