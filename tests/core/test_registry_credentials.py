"""Certificate and PSK credentials in the registry (bridge.registry, bridge.certfile), on
tmp_path SQLite files: ids, live views, migration of old files, import, privacy."""

import base64
import hashlib
import os
import sqlite3
import stat

import pytest

import x509make
from bridge.settings import StartupError
from bridge.certfile import CertificateError, from_der, read_pem
from bridge.core.actions import Device, PowerSettings
from bridge.core.auth import Certificate, PresharedKey, certificate_id
from bridge.registry import DeviceRow, Registry, RegistryError, read_csv


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "data" / "registry.sqlite3")


@pytest.fixture
def registry(db_path):
    reg = Registry(db_path)
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def leaf():
    cert, _ = x509make.certificate("sensor-17")
    return cert


def pem_body_id(pem: bytes) -> str:
    """ThingsBoard's id, computed from the PEM text as the platform does (headers and
    newlines stripped, SHA3-256 of that string), independently of certificate_id."""
    lines = [line for line in pem.decode("ascii").splitlines()
             if line and not line.startswith("-----")]
    return hashlib.sha3_256("".join(lines).encode("ascii")).hexdigest()


# -- the certificate id -------------------------------------------------------------------------

def test_certificate_id_is_sha3_of_the_pem_body_joined(leaf):
    der = x509make.der(leaf)
    assert certificate_id(der) == pem_body_id(x509make.pem(leaf))
    assert len(certificate_id(der)) == 64
    assert certificate_id(der) != hashlib.sha3_256(der).hexdigest()  # of the base64, not the DER
    assert base64.b64decode("".join(x509make.pem(leaf).decode().splitlines()[1:-1])) == der


def test_read_pem_takes_the_leaf_of_a_chain_and_its_cn(leaf):
    ca, _ = x509make.certificate("Test CA", ca=True)
    cert = read_pem(x509make.pem(leaf) + x509make.pem(ca))
    assert cert.sha3 == pem_body_id(x509make.pem(leaf)) and cert.cn == "sensor-17"
    assert cert.pem.encode() == x509make.pem(leaf)
    assert from_der(x509make.der(leaf)) == cert


@pytest.mark.parametrize("data", [b"", b"hello", b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
                                  b"-----BEGIN CERTIFICATE-----\nnot base64!\n"
                                  b"-----END CERTIFICATE-----\n"])
def test_read_pem_refuses_what_is_not_a_certificate_in_one_line(data):
    with pytest.raises(CertificateError) as info:
        read_pem(data, "device.pem")
    assert "device.pem" in str(info.value) and "\n" not in str(info.value)


def test_certificate_equality_is_by_id_only():
    assert Certificate("ab" * 32, cn="one") == Certificate("ab" * 32, cn="two")
    assert hash(Certificate("ab" * 32, cn="one")) == hash(Certificate("ab" * 32))
    assert Certificate("ab" * 32) != Certificate("cd" * 32)
    assert PresharedKey("id") == PresharedKey("id") != PresharedKey("other")


# -- devices with certificates and keys ------------------------------------------------------------

def test_a_certificate_device_needs_no_token(registry, leaf):
    sha3 = certificate_id(x509make.der(leaf))
    entry = registry.add("Cert A", None, "thermo", cert_pem=x509make.pem(leaf).decode())
    assert entry.cert_sha3 == sha3 and entry.token is None and entry.kinds == ["x509"]
    registry.refresh()
    assert registry.certificates == {sha3: Device("Cert A", "thermo")}
    assert registry.devices == {} and registry.psk == {}
    [stored] = registry.entries()
    assert stored.cert_sha3 == sha3 and stored.cert_pem == x509make.pem(leaf).decode()


def test_a_psk_identity_defaults_to_the_token(registry):
    registry.add("Psk A", "tokA", "thermo", psk_key=b"secret-key")
    registry.add("Psk B", None, "thermo", psk_identity="device-b", psk_key=bytes(16))
    registry.refresh()
    assert registry.psk == {"tokA": (Device("Psk A", "thermo"), b"secret-key"),
                            "device-b": (Device("Psk B", "thermo"), bytes(16))}
    assert registry.devices == {"tokA": Device("Psk A", "thermo")}
    assert [e.kinds for e in registry.entries()] == [["token", "psk"], ["psk"]]


def test_keys_never_appear_in_an_entrys_repr(registry):
    registry.add("Psk A", "tokA", "thermo", psk_key=b"very-secret-key")
    assert "very-secret-key" not in repr(registry.entries())


@pytest.mark.parametrize("kwargs, message", [
    (dict(token=None), "needs a credential"),
    (dict(token=None, psk_key=b"k"), "needs a credential"),  # no identity, no token
    (dict(token="t", psk_identity="id"), "needs its key"),
    (dict(token="t", psk_key=b""), "1 to 256 bytes"),
    (dict(token="t", psk_key=bytes(257)), "1 to 256 bytes"),
    (dict(token="t", psk_identity="x" * 129, psk_key=b"k"), "1 to 128 bytes"),
    (dict(token="t", psk_identity="a\nb", psk_key=b"k"), "printable"),
    (dict(token=None, cert_sha3="ABC"), "64 lower-case hex"),
    (dict(token=None, cert_pem="junk"), "no PEM certificate"),
])
def test_bad_credentials_are_refused(registry, kwargs, message):
    token = kwargs.pop("token")
    with pytest.raises(RegistryError, match=message):
        registry.add("Dev", token, "thermo", **kwargs)
    assert registry.entries() == []


def test_one_certificate_on_two_devices_is_refused_naming_the_owner(registry, leaf):
    text = x509make.pem(leaf).decode()
    registry.add("Cert A", None, "thermo", cert_pem=text)
    with pytest.raises(RegistryError, match="certificate is already registered.*'Cert A'"):
        registry.add("Cert B", None, "thermo", cert_pem=text)


def test_one_psk_identity_on_two_devices_is_refused(registry):
    registry.add("Psk A", None, "thermo", psk_identity="shared-id", psk_key=b"k1")
    with pytest.raises(RegistryError, match="PSK identity already belongs to another device"):
        registry.add("Psk B", None, "thermo", psk_identity="shared-id", psk_key=b"k2")
    with pytest.raises(RegistryError, match="token already belongs"):  # a token, too
        registry.add("Tok", "tokA", "thermo")
        registry.add("Psk C", "tokA", "thermo", psk_identity="other", psk_key=b"k3")


def test_deleted_and_pending_devices_are_in_no_view(registry, leaf):
    registry.add("Cert A", None, "thermo", cert_pem=x509make.pem(leaf).decode())
    registry.add("Psk A", "tokA", "thermo", psk_key=b"k", pending=True)
    registry.mark_deleted("Cert A")
    registry.refresh()
    assert registry.certificates == {} and registry.psk == {} and registry.devices == {}


def test_views_are_refreshed_in_place_after_another_connection_writes(registry, db_path, leaf):
    certificates, psk = registry.certificates, registry.psk
    registry.refresh()
    writer = Registry(db_path)
    try:
        writer.add("Cert A", None, "thermo", cert_pem=x509make.pem(leaf).decode())
        writer.add("Psk A", None, "thermo", psk_identity="id-a", psk_key=b"old")
        assert registry.refresh() is True
        assert list(certificates.values()) == [Device("Cert A", "thermo")]
        assert psk == {"id-a": (Device("Psk A", "thermo"), b"old")}
        assert registry.refresh() is False  # nothing changed since
        with sqlite3.connect(db_path) as db:  # the key changes (an operator's SQL, say)
            db.execute("UPDATE devices SET psk_key = ? WHERE name = 'Psk A'", (b"new",))
        assert registry.refresh() is True and psk["id-a"][1] == b"new"
        writer.remove("Cert A")
        writer.remove("Psk A")
        assert registry.refresh() is True
        assert certificates == {} and psk == {}
        assert registry.certificates is certificates and registry.psk is psk
    finally:
        writer.close()


# -- migration of registries made before credentials -----------------------------------------------

@pytest.mark.parametrize("with_pending", [False, True])
def test_an_old_registry_is_rebuilt_keeping_its_devices(db_path, leaf, with_pending):
    os.makedirs(os.path.dirname(db_path))
    with sqlite3.connect(db_path) as db:  # the schema of the earlier versions
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, "
                   "type TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0%s)"
                   % (", pending INTEGER NOT NULL DEFAULT 0" if with_pending else ""))
        db.execute("INSERT INTO devices (name, token, type, deleted) VALUES "
                   "('A', 'tokA', 'thermo', 0), ('B', 'tokB', 'pump', 1)")
        if with_pending:
            db.execute("INSERT INTO devices (name, token, type, pending) VALUES "
                       "('C', 'tokC', 'valve', 1)")
    registry = Registry(db_path)
    try:
        assert [(e.name, e.token, e.type, e.deleted, e.pending) for e in registry.entries()] == \
            [("A", "tokA", "thermo", False, False), ("B", "tokB", "pump", True, False)] + \
            ([("C", "tokC", "valve", False, True)] if with_pending else [])
        assert registry.lookup("tokA") == Device("A", "thermo")
        registry.add("Cert", None, "thermo", cert_pem=x509make.pem(leaf).decode())  # NULL token
        with pytest.raises(RegistryError, match="token already belongs"):  # still UNIQUE
            registry.add("A2", "tokA", "thermo")
    finally:
        registry.close()
    again = Registry(db_path)  # opening a migrated file changes nothing
    try:
        assert [e.name for e in again.entries()] == ["A", "B"] + (["C"] if with_pending else []) \
            + ["Cert"]
    finally:
        again.close()


def test_a_failed_migration_leaves_the_old_table(db_path, monkeypatch):
    os.makedirs(os.path.dirname(db_path))
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, "
                   "type TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO devices VALUES ('A', 'tokA', 'thermo', 0)")
        db.execute("CREATE TABLE devices_new (x)")  # in the way: the rebuild fails
    with pytest.raises(StartupError, match="cannot bring .* schema .*devices_new.* unchanged"):
        Registry(db_path)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT name, token FROM devices").fetchall() == [("A", "tokA")]
        columns = [row[1] for row in db.execute("PRAGMA table_info(devices)")]
        assert "psk_key" not in columns  # rolled back whole


# -- import --------------------------------------------------------------------------------

def test_import_with_a_header_takes_certificates_and_keys(tmp_path, registry, leaf):
    x509make.write_pem(tmp_path / "a.pem", leaf)
    other, _ = x509make.certificate("other")
    inline = x509make.pem(other).decode()
    path = tmp_path / "devices.csv"
    path.write_text('type,name,cert,token,psk_identity,psk_key_hex,psk_key\n'
                    ',Cert A,a.pem,,,,\n'
                    'pump,Cert B,"%s",,,,\n'
                    ',Psk A,,tokA,,00ff10,\n'
                    ',Psk B,,,id-b,,text-key\n'
                    ',Plain,,tokP\n' % inline)
    rows = read_csv(str(path), "default")
    assert rows[2] == DeviceRow("Psk A", "tokA", "default", None, None, b"\x00\xff\x10")
    assert rows[4] == DeviceRow("Plain", "tokP", "default")
    assert registry.import_rows(rows) == 5
    registry.refresh()
    assert registry.certificates == {
        certificate_id(x509make.der(leaf)): Device("Cert A", "default"),
        certificate_id(x509make.der(other)): Device("Cert B", "pump")}
    assert registry.psk == {"tokA": (Device("Psk A", "default"), b"\x00\xff\x10"),
                            "id-b": (Device("Psk B", "default"), b"text-key")}
    assert set(registry.devices) == {"tokA", "tokP"}


@pytest.mark.parametrize("text, message", [
    ("name,cert\nA,missing.pem\n", "line 2: cannot read the certificate"),
    ("name,psk_identity,psk_key_hex\nA,id,zz\n", "line 2: the PSK key is not hex"),
    ("name,psk_identity,psk_key,psk_key_hex\nA,id,k,00\n", "both given"),
    ("name,token\nA\n", "line 2: 1 cells"),
])
def test_import_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "devices.csv"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        read_csv(str(path), "default")


def test_an_import_with_a_bad_certificate_or_a_duplicate_adds_nothing(tmp_path, registry, leaf):
    text = x509make.pem(leaf).decode()
    with pytest.raises(RegistryError, match="row 2: the cert column holds no PEM"):
        registry.import_rows([DeviceRow("A", None, "t", text), DeviceRow("B", None, "t", "junk")])
    with pytest.raises(RegistryError, match="nothing added: a certificate is already registered"):
        registry.import_rows([DeviceRow("A", None, "t", text), DeviceRow("B", None, "t", text)])
    with pytest.raises(RegistryError, match="nothing added: a PSK identity is already used"):
        registry.import_rows([DeviceRow("A", None, "t", None, "id", b"k"),
                              DeviceRow("B", None, "t", None, "id", b"k")])
    assert registry.entries() == []


# -- privacy -------------------------------------------------------------------------------

def test_the_file_and_its_wal_files_stay_private(db_path):
    first = Registry(db_path)
    second = Registry(db_path)
    try:
        first.add("Psk A", "tokA", "thermo", psk_key=b"k")
        second.refresh()
        for suffix in ("", "-wal", "-shm"):
            assert os.path.exists(db_path + suffix)
            assert stat.S_IMODE(os.stat(db_path + suffix).st_mode) == 0o600, suffix
    finally:
        first.close()
        second.close()


def test_a_registry_readable_by_others_is_made_private_on_open(db_path):
    Registry(db_path).close()
    os.chmod(db_path, 0o644)
    Registry(db_path).close()
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


def test_a_file_of_the_last_version_gets_the_power_columns(tmp_path):
    """The power-saving columns are added (ALTER TABLE) to a file with every other column;
    its devices keep their credentials and have no power saving of their own."""

    db_path = str(tmp_path / "registry.sqlite3")
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT UNIQUE, "
                   "type TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, pending INTEGER "
                   "NOT NULL DEFAULT 0, cert_sha3 TEXT UNIQUE, cert_pem TEXT, psk_identity "
                   "TEXT UNIQUE, psk_key BLOB)")
        db.execute("INSERT INTO devices (name, token, type, psk_identity, psk_key) VALUES "
                   "('Old', 'tokO', 'x', 'id-1', x'0102')")
    registry = Registry(db_path)
    try:
        assert registry.entries()[0].power is None
        assert registry.lookup("tokO") == Device("Old", "x")
        assert registry.set_power("Old", PowerSettings("E_DRX", None, None, 5000))
        assert registry.lookup("tokO").power == PowerSettings("E_DRX", None, None, 5000)
        assert registry.psk["id-1"][1] == b"\x01\x02"
    finally:
        registry.close()
    Registry(db_path).close()  # opened again: nothing more to do
