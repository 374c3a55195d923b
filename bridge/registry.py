"""Device registry: each device's name, profile and credentials, in SQLite under DATA_DIR.

A device authenticates with any of its credentials: an access token (in the URL), a
client certificate (``cert_sha3``, ThingsBoard's id of it, and the leaf's PEM), or a
pre-shared key (``psk_identity`` and the raw ``psk_key``) over DTLS. Each is unique
across devices; a certificate or PSK device may have no token.

The ``coapbridge devices`` commands write it; a running bridge reads it. The
bridge keeps in-memory copies (``Registry.devices``: token -> device,
``certificates``: certificate id -> device, ``psk``: identity -> (device, key)) and
reloads them when SQLite's ``data_version`` says another connection changed the file
(``Registry.refresh``, once per reactor turn), so additions and removals take
effect at once, without a restart.

Tokens and keys are secrets: the file is the owner's only (0600, and its WAL side files),
``mask()`` is for a token in a log line, and a key is never logged or printed.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from .certfile import CertificateError, read_pem
from .core import names
from . import registry_power
from .core.actions import Device, PowerSettings
from .settings import StartupError
from .sqlite import CorruptDatabase, Transaction, open_database

_COLUMNS = """
    name         TEXT PRIMARY KEY,
    token        TEXT UNIQUE,
    type         TEXT NOT NULL,
    deleted      INTEGER NOT NULL DEFAULT 0,
    pending      INTEGER NOT NULL DEFAULT 0,
    cert_sha3    TEXT UNIQUE,
    cert_pem     TEXT,
    psk_identity TEXT UNIQUE,
    psk_key      BLOB,
    power_mode   TEXT,
    psm_activity_timer INTEGER,
    edrx_cycle   INTEGER,
    paging_transmission_window INTEGER
"""
_SCHEMA = "CREATE TABLE IF NOT EXISTS devices (%s);" % _COLUMNS
_OLD_COLUMNS = ("name", "token", "type", "deleted", "pending")  # what the rebuild copies
MAX_PSK_IDENTITY = 128  # bytes of UTF-8: OpenSSL's PSK_MAX_IDENTITY_LEN in 1.1
MAX_PSK_KEY = 256  # bytes: OpenSSL's PSK_MAX_PSK_LEN in 1.1
SHA3_HEX = 64

class RegistryError(Exception):
    """A registry operation that cannot be done, with a message for the operator."""


class RegistryUnavailable(RegistryError):
    """A shared registry's database cannot be reached (bridge.registry_pg)."""


@dataclass(frozen=True)
class Entry:
    name: str
    token: Optional[str]  # None: the device authenticates by certificate or PSK only
    type: str
    deleted: bool = False
    pending: bool = False  # waits for local provisioning (pre_provisioned strategy)
    cert_sha3: Optional[str] = None
    cert_pem: Optional[str] = field(default=None, repr=False)
    psk_identity: Optional[str] = None
    psk_key: Optional[bytes] = field(default=None, repr=False)  # a secret: never printed
    power: Optional[PowerSettings] = None  # its own power saving (None: its profile's)

    @property
    def kinds(self) -> List[str]:
        """The credential kinds this device has: ``token``, ``x509``, ``psk``."""
        return [kind for kind, value in (("token", self.token), ("x509", self.cert_sha3),
                                         ("psk", self.psk_identity)) if value]


class DeviceRow(NamedTuple):
    """A device to add (``import_rows``, ``read_csv``); ``cert_pem`` is PEM text."""

    name: str
    token: Optional[str]
    type: str
    cert_pem: Optional[str] = None
    psk_identity: Optional[str] = None
    psk_key: Optional[bytes] = None


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
        _keep_private(path)  # it holds keys: a file made by an older version is closed too
        self._migrate()
        self._version: Optional[int] = None  # None: the copies must be read again
        self.devices: Dict[str, Device] = {}  # token -> live device, as of the last refresh
        self.certificates: Dict[str, Device] = {}  # certificate id (sha3) -> live device
        self.psk: Dict[str, Tuple[Device, bytes]] = {}  # PSK identity -> (device, key)

    def _migrate(self) -> None:
        """Bring a registry made by an older version to this schema: the table is rebuilt
        once (the token loses NOT NULL, which SQLite cannot ALTER; the credential columns
        and, for the oldest files, ``pending`` arrive), in one transaction (another process
        may be opening the same file), or not at all; the power-saving columns are added
        to a file that has the others."""
        try:
            self._rebuild()
            self._add_power_columns()
        except sqlite3.Error as exc:  # rolled back: the file is as it was
            self._db.close()
            raise StartupError("cannot bring %s to this version's schema (%s); it is "
                               "unchanged" % (self.path, exc))

    def _rebuild(self) -> None:
        if self._needs_migration():
            with self._transaction():
                if not self._needs_migration():
                    return  # another process did it first
                columns = self._columns()
                copied = ", ".join(c for c in _OLD_COLUMNS if c in columns)
                self._db.execute("CREATE TABLE devices_new (%s)" % _COLUMNS)
                self._db.execute("INSERT INTO devices_new (%s) SELECT %s FROM devices"
                                 % (copied, copied))
                self._db.execute("DROP TABLE devices")
                self._db.execute("ALTER TABLE devices_new RENAME TO devices")

    def _add_power_columns(self) -> None:
        if registry_power.COLUMNS[0] in self._columns():
            return
        with self._transaction():
            columns = self._columns()
            for column, kind in zip(registry_power.COLUMNS, registry_power.SQL_TYPES):
                if column not in columns:  # another process may have added them first
                    self._db.execute("ALTER TABLE devices ADD COLUMN %s %s" % (column, kind))

    def _columns(self) -> Dict[str, bool]:
        """Column name -> whether it is NOT NULL."""
        return {row[1]: bool(row[3]) for row in self._db.execute("PRAGMA table_info(devices)")}

    def _needs_migration(self) -> bool:
        columns = self._columns()
        return "psk_key" not in columns or columns.get("token", False)

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
        """Bring ``devices``, ``certificates`` and ``psk`` up to date with the file (one
        ``PRAGMA data_version`` query, and a reload when another connection or this one
        changed it); True when it changed.

        Each is one dict, updated in place, so a reference to it (or to its ``get``) stays
        a live view: the bridge refreshes them once per reactor turn, before the requests
        of that turn are handled, and the core reads them as plain data. Deleted and
        pending devices are in none of them."""
        version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
        if version == self._version:
            return False
        rows = self._db.execute("SELECT token, name, type, cert_sha3, psk_identity, psk_key, "
                                "%s FROM devices WHERE deleted = 0 AND pending = 0"
                                % ", ".join(registry_power.COLUMNS)).fetchall()
        devices: Dict[str, Device] = {}
        certificates: Dict[str, Device] = {}
        psk: Dict[str, Tuple[Device, bytes]] = {}
        for token_, name, type_, cert_sha3, identity, key, *power in rows:
            device = Device(name, type_, registry_power.power_of(power))
            if token_ is not None:
                devices[token_] = device
            if cert_sha3 is not None:
                certificates[cert_sha3] = device
            if identity is not None and key is not None:
                psk[identity] = (device, bytes(key))
        for view, fresh in ((self.devices, devices), (self.certificates, certificates),
                            (self.psk, psk)):
            view.clear()
            view.update(fresh)  # type: ignore[attr-defined]
        self._version = version
        return True

    def lookup(self, token: str) -> Optional[Device]:
        """The live device for ``token``, or None (unknown or deleted), read from the file."""
        self.refresh()
        return self.devices.get(token)

    def rename(self, old: str, new: str) -> bool:
        check_name(new)
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

    def add(self, name: str, token: Optional[str], device_type: str, pending: bool = False,
            *, cert_sha3: Optional[str] = None, cert_pem: Optional[str] = None,
            psk_identity: Optional[str] = None, psk_key: Optional[bytes] = None,
            power: Optional[PowerSettings] = None) -> Entry:
        """Register a device with any of its credentials (at least one). A PSK identity
        defaults to the token. ``cert_pem`` alone gives ``cert_sha3`` (a certificate id
        without its PEM is fine too: X.509 auto-registration may pass both). ``power``: its
        own power saving (None: its profile's)."""
        entry = _entry(name, token, device_type, pending, cert_sha3, cert_pem, psk_identity,
                       psk_key, power)
        try:
            with self._transaction():
                self._insert([entry])
        except sqlite3.IntegrityError as exc:
            raise RegistryError(self._conflict(entry, exc))
        self._version = None
        return entry

    def set_power(self, name: str, power: Optional[PowerSettings]) -> bool:
        """Give ``name`` its own power saving (None: its profile's again); False when there
        is no such device."""
        values = registry_power.row_values(_checked_power(power))
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE devices SET %s WHERE name = ?"
                % ", ".join("%s = ?" % c for c in registry_power.COLUMNS), values + (name,))
        self._version = None
        return cursor.rowcount > 0

    def remove(self, name: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM devices WHERE name = ?", (name,))
        self._version = None
        return cursor.rowcount > 0

    def entries(self) -> List[Entry]:
        rows = self._db.execute("SELECT name, token, type, deleted, pending, cert_sha3, "
                                "cert_pem, psk_identity, psk_key, %s FROM devices ORDER BY name"
                                % ", ".join(registry_power.COLUMNS))
        return [entry_of(row) for row in rows]

    def import_rows(self, rows: Iterable[Union[DeviceRow, Sequence[str]]]) -> int:
        """Add every row (``DeviceRow``, or ``(name, token, type)``) in one transaction;
        nothing is added if any row is bad."""
        entries = import_entries(rows)
        try:
            with self._transaction():
                self._insert(entries)
        except sqlite3.IntegrityError as exc:
            raise RegistryError("import refused, nothing added: %s" % _integrity(exc))
        self._version = None
        return len(entries)

    def _insert(self, entries: Sequence[Entry]) -> None:
        self._db.executemany(
            "INSERT INTO devices (name, token, type, pending, cert_sha3, cert_pem, "
            "psk_identity, psk_key, %s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            % ", ".join(registry_power.COLUMNS),
            [(e.name, e.token, e.type, int(e.pending), e.cert_sha3, e.cert_pem, e.psk_identity,
              e.psk_key) + registry_power.row_values(e.power) for e in entries])

    def _conflict(self, entry: Entry, exc: sqlite3.IntegrityError) -> str:
        if self._db.execute("SELECT 1 FROM devices WHERE name = ?", (entry.name,)).fetchall():
            return "a device named %r already exists" % entry.name
        for column, value, what in (
                ("cert_sha3", entry.cert_sha3, "that certificate is already registered"),
                ("psk_identity", entry.psk_identity, "that PSK identity already belongs"),
                ("token", entry.token, "that token already belongs")):
            if value is None:
                continue
            owner = self._db.execute("SELECT name FROM devices WHERE %s = ?" % column,
                                     (value,)).fetchall()
            if owner:
                if column == "cert_sha3":  # a certificate is no secret: name its device
                    return "%s, for device %r" % (what, owner[0][0])
                return what + " to another device"
        return _integrity(exc)

    def _transaction(self) -> Transaction:
        return Transaction(self._db)


def import_entries(rows: Iterable[Union[DeviceRow, Sequence[str]]]) -> List[Entry]:
    """The checked entries of an import (every backend's): ``RegistryError`` naming each
    bad row when any is."""
    entries, problems = [], []
    for number, row in enumerate(rows, 1):
        device = row if isinstance(row, DeviceRow) else DeviceRow(*row)
        try:
            cert = read_pem(device.cert_pem.encode("utf-8"), "the cert column") \
                if device.cert_pem else None
            entries.append(_entry(device.name, device.token, device.type, False,
                                  cert.sha3 if cert else None, cert.pem if cert else None,
                                  device.psk_identity, device.psk_key))
        except (RegistryError, CertificateError) as exc:
            problems.append("row %d: %s" % (number, exc))
    if problems:
        raise RegistryError("; ".join(problems))
    return entries


def _integrity(exc: sqlite3.IntegrityError) -> str:
    text = str(exc)
    for column, what in (("devices.token", "a token is already used by another device"),
                         ("devices.name", "a device name already exists"),
                         ("devices.cert_sha3", "a certificate is already registered to "
                                               "another device"),
                         ("devices.psk_identity", "a PSK identity is already used by "
                                                  "another device")):
        if column in text:
            return what
    return text


def _keep_private(path: str) -> None:
    """Owner-only modes for the file and its WAL side files (they hold tokens and keys)."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            continue


def entry_of(row: Sequence[Any]) -> Entry:
    """An entry from a row (name, token, type, deleted, pending, cert_sha3, cert_pem,
    psk_identity, psk_key, then the power-saving columns), either backend's."""
    name, token, type_, deleted, pending, cert_sha3, cert_pem, identity, key = row[:9]
    return Entry(name, token, type_, bool(deleted), bool(pending), cert_sha3, cert_pem,
                 identity, bytes(key) if key is not None else None,
                 registry_power.power_of(row[9:]))


def _checked_power(power: Optional[PowerSettings]) -> Optional[PowerSettings]:
    try:
        return registry_power.check(power)
    except registry_power.BadPower as exc:
        raise RegistryError(str(exc))


def _entry(name: str, token: Optional[str], device_type: str, pending: bool,
           cert_sha3: Optional[str], cert_pem: Optional[str], psk_identity: Optional[str],
           psk_key: Optional[bytes], power: Optional[PowerSettings] = None) -> Entry:
    """A checked new device (``RegistryError`` names what is wrong, never a secret)."""
    if cert_pem is not None and cert_sha3 is None:
        try:
            cert = read_pem(cert_pem.encode("utf-8"), "the certificate")
        except CertificateError as exc:
            raise RegistryError(str(exc))
        cert_sha3, cert_pem = cert.sha3, cert.pem
    if psk_key is not None and psk_identity is None:
        psk_identity = token  # ThingsBoard's habit: the token is the identity
    _validate(name, token, device_type, required=cert_sha3 is None and psk_identity is None)
    if cert_sha3 is not None and (len(cert_sha3) != SHA3_HEX or
                                  any(c not in "0123456789abcdef" for c in cert_sha3)):
        raise RegistryError("a certificate id is 64 lower-case hex digits (SHA3-256)")
    if psk_identity is not None or psk_key is not None:
        _validate_psk(psk_identity, psk_key)
    return Entry(name, token, device_type, False, pending, cert_sha3, cert_pem, psk_identity,
                 psk_key, _checked_power(power))


def _validate(name: str, token: Optional[str], device_type: str, required: bool = True) -> None:
    check_name(name)
    if token is None and required:
        raise RegistryError("a device needs a credential: a token, a certificate or a PSK")
    if token is not None and (not token or any(c in token for c in "/?#")
                              or any(c.isspace() for c in token) or not token.isprintable()):
        raise RegistryError("token must be non-empty printable text with no '/', '?', '#' "
                            "or spaces")
    why = names.problem(device_type, "device type")
    if why is not None:
        raise RegistryError(why)


def check_name(name: str) -> None:
    """``RegistryError`` when ``name`` cannot be a device's name (``core.names``)."""
    why = names.problem(name)
    if why is not None:
        raise RegistryError(why)


def _validate_psk(identity: Optional[str], key: Optional[bytes]) -> None:
    if identity is None:
        raise RegistryError("a PSK needs an identity (or a token, the default identity)")
    if key is None:
        raise RegistryError("a PSK identity needs its key")
    if not identity or len(identity.encode("utf-8")) > MAX_PSK_IDENTITY \
            or not identity.isprintable():
        raise RegistryError("a PSK identity must be 1 to %d bytes of printable UTF-8"
                            % MAX_PSK_IDENTITY)
    if not 1 <= len(key) <= MAX_PSK_KEY:
        raise RegistryError("a PSK key must be 1 to %d bytes" % MAX_PSK_KEY)


def parse_key(text: Optional[str] = None, hex_text: Optional[str] = None) -> bytes:
    """A PSK key from its text (UTF-8 bytes) or hex form."""
    if hex_text is not None:
        try:
            return bytes.fromhex(hex_text)
        except ValueError:
            raise RegistryError("the PSK key is not hex (two digits a byte)")
    assert text is not None
    return text.encode("utf-8")


CSV_COLUMNS = ("name", "token", "type", "cert", "psk_identity", "psk_key", "psk_key_hex")


def read_csv(path: str, default_type: str) -> List[DeviceRow]:
    """Rows ``name,token[,type]``; or, after a header row naming its columns (``name`` and
    any of ``token``, ``type``, ``cert``, ``psk_identity``, ``psk_key``, ``psk_key_hex``, in
    any order), rows of those. ``cert`` is a PEM file (relative to the CSV's folder) or the
    PEM text itself (quoted); an empty cell is no value. Errors name the file's line."""
    rows: List[DeviceRow] = []
    header: Optional[List[str]] = None
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for index, row in enumerate(reader):
            number = reader.line_num  # the row's last line (a PEM cell spans several)
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            names = [cell.lower() for cell in cells]
            if index == 0 and "name" in names and all(n in CSV_COLUMNS for n in names) \
                    and len(set(names)) == len(names) and len(names) >= 2:
                header = names
                continue
            if header is None:
                if len(cells) not in (2, 3):
                    raise RegistryError("%s line %d: expected name,token[,type]" % (path, number))
                device_type = cells[2] if len(cells) == 3 and cells[2] else default_type
                rows.append(DeviceRow(cells[0], cells[1], device_type))
                continue
            if not 2 <= len(cells) <= len(header):
                raise RegistryError("%s line %d: %d cells, expected 2 to %d (%s)"
                                    % (path, number, len(cells), len(header), ",".join(header)))
            rows.append(_header_row(path, number, dict(zip(header, cells)), default_type))
    return rows


def _header_row(path: str, number: int, cells: Dict[str, str], default_type: str) -> DeviceRow:
    where = "%s line %d" % (path, number)
    cert = cells.get("cert") or None
    if cert is not None and "-----BEGIN" not in cert:
        file = os.path.join(os.path.dirname(path), cert)
        try:
            with open(file, encoding="ascii") as handle:
                cert = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError("%s: cannot read the certificate %s (%s)"
                                % (where, file, getattr(exc, "strerror", None) or exc))
    if cells.get("psk_key") and cells.get("psk_key_hex"):
        raise RegistryError("%s: psk_key and psk_key_hex both given" % where)
    key = None
    try:
        if cells.get("psk_key_hex"):
            key = parse_key(hex_text=cells["psk_key_hex"])
        elif cells.get("psk_key"):
            key = parse_key(cells["psk_key"])
    except RegistryError as exc:
        raise RegistryError("%s: %s" % (where, exc))
    return DeviceRow(cells.get("name", ""), cells.get("token") or None,
                     cells.get("type") or default_type, cert, cells.get("psk_identity") or None,
                     key)
