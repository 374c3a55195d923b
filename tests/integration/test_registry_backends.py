"""One set of registry tests, run against both backends: SQLite (bridge.registry) and a
real PostgreSQL (bridge.registry_pg, on the session's private cluster).

Whatever the CLI, provisioning or the platform's renames and deletes do, the two must
answer the same: ``TestRegistryContract`` runs once per backend (``backend`` opens a
new connection to one shared registry each time it is called, as a CLI beside a
bridge)."""

from __future__ import annotations


import pytest

pytest.importorskip("psycopg", reason="psycopg is installed on CPython only (setup.cfg)")
pytestmark = pytest.mark.integration

import x509make
from bridge.settings import StartupError
from bridge.core.actions import Device, PowerSettings
from bridge.core.auth import certificate_id
from bridge.registry import DeviceRow, Entry, Registry, RegistryError
from bridge.registry_pg import PgRegistry, RegistryUnavailable


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    opened = []
    if request.param == "sqlite":
        path = str(tmp_path / "data" / "registry.sqlite3")

        def open_one():
            opened.append(Registry(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_url")

        def open_one():
            opened.append(PgRegistry(url, "test registry", pool_size=2))
            return opened[-1]
    yield open_one
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(backend):
    return backend()


@pytest.fixture(scope="module")
def leaf():
    cert, _ = x509make.certificate("sensor-17")
    return cert


def views(registry):
    """(devices, certificates, psk) as a bridge would read them from this registry."""
    if isinstance(registry, Registry):
        registry.refresh()
        return registry.devices, registry.certificates, registry.psk
    loaded = registry.load()  # what the shared registry's listener loads
    return loaded.devices, loaded.certificates, loaded.psk


class TestRegistryContract:
    def test_add_then_lookup_and_list(self, registry):
        assert registry.add("Dev A", "tokA", "thermo") == Entry("Dev A", "tokA", "thermo")
        registry.add("b", "tokB", "x", pending=True)
        assert registry.lookup("tokA") == Device("Dev A", "thermo")
        assert registry.lookup("toka") is None  # tokens are case-sensitive
        assert registry.lookup("tokB") is None  # pending: no device yet
        assert registry.entries() == [Entry("Dev A", "tokA", "thermo"),
                                      Entry("b", "tokB", "x", pending=True)]

    def test_entries_sort_by_code_point_as_sqlite_does(self, registry):
        for name, token in [("b", "t1"), ("B", "t2"), ("a", "t3"), ("_", "t4")]:
            registry.add(name, token, "x")
        assert [entry.name for entry in registry.entries()] == ["B", "_", "a", "b"]

    def test_a_duplicate_name_or_token_is_refused_without_revealing_the_token(self, registry):
        registry.add("Dev A", "secretToken1", "thermo")
        with pytest.raises(RegistryError, match="a device named 'Dev A' already exists"):
            registry.add("Dev A", "other", "thermo")
        with pytest.raises(RegistryError) as info:
            registry.add("Dev B", "secretToken1", "thermo")
        assert str(info.value) == "that token already belongs to another device"
        assert registry.entries() == [Entry("Dev A", "secretToken1", "thermo")]

    @pytest.mark.parametrize("name,token,device_type", [
        ("", "tok", "t"), ("  ", "tok", "t"), ("Dev", "", "t"), ("Dev", "a/b", "t"),
        ("Dev", "a b", "t"), ("Dev", "tok", "")])
    def test_an_invalid_device_is_refused(self, registry, name, token, device_type):
        with pytest.raises(RegistryError):
            registry.add(name, token, device_type)
        assert registry.entries() == []

    def test_remove(self, registry):
        registry.add("Dev A", "tokA", "thermo")
        assert registry.remove("Dev A") is True
        assert registry.remove("Dev A") is False
        assert registry.lookup("tokA") is None and registry.entries() == []

    def test_another_connection_sees_each_change(self, backend):
        writer, reader = backend(), backend()
        assert reader.lookup("tokA") is None
        writer.add("Dev A", "tokA", "thermo")
        assert reader.lookup("tokA") == Device("Dev A", "thermo")
        assert writer.rename("Dev A", "Dev Z") is True
        assert reader.lookup("tokA") == Device("Dev Z", "thermo")
        assert writer.mark_deleted("Dev Z") is True
        assert reader.lookup("tokA") is None
        assert reader.entries() == [Entry("Dev Z", "tokA", "thermo", deleted=True)]

    def test_rename_refuses_a_taken_or_empty_name(self, registry):
        registry.add("A", "t1", "x")
        registry.add("B", "t2", "x")
        with pytest.raises(RegistryError, match="a device named 'B' already exists"):
            registry.rename("A", "B")
        with pytest.raises(RegistryError, match="must not be empty"):
            registry.rename("A", " ")
        assert registry.rename("nobody", "C") is False
        assert registry.mark_deleted("nobody") is False
        assert [e.name for e in registry.entries()] == ["A", "B"]

    @pytest.mark.parametrize("bad", ["evil\x1b[2J", "two\nlines", "x" * 256, "rtl\u202e"])
    def test_names_with_control_characters_or_over_255_characters_are_refused(self, registry,
                                                                               bad):
        # before: stored as given, then printed raw by the logs and `devices list`
        registry.add("A", "t1", "x")
        with pytest.raises(RegistryError, match="device name must"):
            registry.add(bad, "t2", "x")
        with pytest.raises(RegistryError, match="device name must"):
            registry.rename("A", bad)
        with pytest.raises(RegistryError, match="device name must"):
            registry.provision(bad, "t3", "x", "create_new")
        with pytest.raises(RegistryError, match="device type must"):
            registry.add("C", "t4", "type\x01")
        with pytest.raises(RegistryError, match="token must"):
            registry.add("C", "t\x015", "x")
        assert [e.name for e in registry.entries()] == ["A"]

    def test_local_provisioning_create_new(self, registry):
        assert registry.provision("P1", "tp1", "sensor", "create_new") is True
        assert registry.lookup("tp1") == Device("P1", "sensor")
        assert registry.provision("P1", "tp2", "sensor", "create_new") is False  # exists
        assert registry.provision("P2", "tp1", "sensor", "create_new") is False  # token used
        assert registry.entries() == [Entry("P1", "tp1", "sensor")]

    def test_local_provisioning_pre_provisioned_activates_a_pending_device_once(self,
                                                                             registry):
        registry.add("P1", "placeholder", "sensor", pending=True)
        assert registry.provision("nobody", "t0", "sensor", "pre_provisioned") is False
        assert registry.provision("P1", "tp1", "sensor", "pre_provisioned") is True
        assert registry.lookup("tp1") == Device("P1", "sensor")
        assert registry.provision("P1", "tp9", "sensor", "pre_provisioned") is False  # once
        assert registry.entries() == [Entry("P1", "tp1", "sensor")]

    def test_store_credentials_replaces_and_takes_over_the_token(self, registry):
        registry.add("Old", "tokX", "x")
        registry.add("P1", "tok1", "x")
        registry.mark_deleted("P1")
        registry.store_credentials("P1", "tokX", "sensor")  # the platform gave P1 tokX
        assert registry.lookup("tokX") == Device("P1", "x")  # undeleted, keeps its type
        assert registry.entries() == [Entry("P1", "tokX", "x")]
        registry.store_credentials("New", "tokN", "sensor")
        assert registry.lookup("tokN") == Device("New", "sensor")
        with pytest.raises(RegistryError):
            registry.store_credentials("Bad", "a b", "x")

    def test_import_adds_all_rows_or_none(self, registry):
        registry.add("Existing", "tokE", "x")
        with pytest.raises(RegistryError, match="import refused, nothing added: a token"):
            registry.import_rows([("N1", "t1", "x"), ("N2", "tokE", "x")])
        with pytest.raises(RegistryError, match="row 2: token"):
            registry.import_rows([("N1", "t1", "x"), ("N2", "a/b", "x")])
        assert [e.name for e in registry.entries()] == ["Existing"]
        assert registry.import_rows([("N1", "t1", "x"), ("N2", "t2", "y")]) == 2
        assert registry.lookup("t2") == Device("N2", "y")

    # -- certificates and pre-shared keys (the DTLS contract) --------------------------

    def test_a_certificate_device_needs_no_token(self, registry, leaf):
        sha3 = certificate_id(x509make.der(leaf))
        pem = x509make.pem(leaf).decode()
        entry = registry.add("Cert A", None, "thermo", cert_pem=pem)
        assert entry.cert_sha3 == sha3 and entry.token is None and entry.kinds == ["x509"]
        assert views(registry) == ({}, {sha3: Device("Cert A", "thermo")}, {})
        [stored] = registry.entries()
        assert stored == entry and stored.cert_pem == pem

    def test_psk_devices_and_their_keys(self, registry):
        registry.add("Psk A", "tokA", "thermo", psk_key=b"secret-key")
        registry.add("Psk B", None, "thermo", psk_identity="device-b", psk_key=bytes(16))
        assert views(registry) == (
            {"tokA": Device("Psk A", "thermo")}, {},
            {"tokA": (Device("Psk A", "thermo"), b"secret-key"),
             "device-b": (Device("Psk B", "thermo"), bytes(16))})
        entries = registry.entries()
        assert [(e.kinds, e.psk_identity, e.psk_key) for e in entries] == [
            (["token", "psk"], "tokA", b"secret-key"), (["psk"], "device-b", bytes(16))]
        assert "secret-key" not in repr(entries)

    def test_each_credential_is_unique_and_a_conflict_says_which(self, registry, leaf):
        text = x509make.pem(leaf).decode()
        registry.add("Cert A", None, "thermo", cert_pem=text)
        with pytest.raises(RegistryError) as info:
            registry.add("Cert B", None, "thermo", cert_pem=text)
        assert str(info.value) == "that certificate is already registered, for device 'Cert A'"
        registry.add("Psk A", None, "thermo", psk_identity="shared-id", psk_key=b"k1")
        with pytest.raises(RegistryError) as info:
            registry.add("Psk B", None, "thermo", psk_identity="shared-id", psk_key=b"k2")
        assert str(info.value) == "that PSK identity already belongs to another device"
        registry.add("Tok", "tokA", "thermo")
        with pytest.raises(RegistryError) as info:
            registry.add("Psk C", "tokA", "thermo", psk_identity="other", psk_key=b"k3")
        assert str(info.value) == "that token already belongs to another device"
        assert [e.name for e in registry.entries()] == ["Cert A", "Psk A", "Tok"]

    def test_deleted_and_pending_devices_are_in_no_view(self, registry, leaf):
        registry.add("Cert A", None, "thermo", cert_pem=x509make.pem(leaf).decode())
        registry.add("Psk A", "tokA", "thermo", psk_key=b"k", pending=True)
        registry.mark_deleted("Cert A")
        assert views(registry) == ({}, {}, {})

    def test_an_import_with_credentials_adds_all_or_nothing(self, registry, leaf):
        text = x509make.pem(leaf).decode()
        with pytest.raises(RegistryError, match="row 2: the cert column holds no PEM"):
            registry.import_rows([DeviceRow("A", None, "t", text),
                                  DeviceRow("B", None, "t", "junk")])
        with pytest.raises(RegistryError,
                           match="nothing added: a certificate is already registered"):
            registry.import_rows([DeviceRow("A", None, "t", text),
                                  DeviceRow("B", None, "t", text)])
        with pytest.raises(RegistryError, match="nothing added: a PSK identity is already used"):
            registry.import_rows([DeviceRow("A", None, "t", None, "id", b"k"),
                                  DeviceRow("B", None, "t", None, "id", b"k")])
        assert registry.entries() == []
        assert registry.import_rows([DeviceRow("A", None, "t", text),
                                     DeviceRow("B", "tokB", "t", None, None, b"kb"),
                                     ("C", "tokC", "t")]) == 3
        devices, certificates, psk = views(registry)
        assert set(devices) == {"tokB", "tokC"} and list(certificates.values()) == [
            Device("A", "t")] and psk == {"tokB": (Device("B", "t"), b"kb")}

    def test_reachable(self, registry):
        assert registry.reachable() is True

    def test_a_devices_own_power_saving_is_kept_changed_and_cleared(self, registry):
        psm = PowerSettings("PSM", 10000)
        registry.add("Meter", "tokM", "meter", power=psm)
        registry.add("Plain", "tokP", "meter")
        assert [e.power for e in registry.entries()] == [psm, None]
        assert views(registry)[0]["tokM"] == Device("Meter", "meter", psm)
        edrx = PowerSettings("E_DRX", None, 81920, 2500)
        assert registry.set_power("Meter", edrx) is True
        assert views(registry)[0]["tokM"].power == edrx
        assert registry.set_power("Meter", PowerSettings()) is True  # its profile's again
        assert views(registry)[0]["tokM"] == Device("Meter", "meter")
        assert registry.set_power("Nobody", psm) is False
        for bad in (PowerSettings("SLEEP"), PowerSettings("PSM", 0), PowerSettings("PSM", -5),
                    PowerSettings(None, 8 * 86400 * 1000)):
            with pytest.raises(RegistryError):
                registry.set_power("Meter", bad)
            with pytest.raises(RegistryError):
                registry.add("Bad", "tokB", "meter", power=bad)


def test_an_unreachable_postgresql_is_one_start_up_line_naming_it_without_the_password():
    with pytest.raises(StartupError) as info:
        PgRegistry("postgresql://u:topsecret@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db")
    text = str(info.value)
    assert "\n" not in text and "topsecret" not in text
    assert text.startswith("cannot use the device registry postgresql://u:***@127.0.0.1:1/db: ")
    assert "refused" in text


def test_a_wrong_password_says_so(postgres):
    url = postgres.url().replace(":" + "pg-test-secret" + "@", ":wrong@")
    with pytest.raises(StartupError, match="password authentication failed"):
        PgRegistry(url, "the registry")


def test_an_old_table_is_migrated_and_a_lost_server_is_unavailable(pg_url, postgres):
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the first release's table
        conn.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, "
                     "type TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false)")
        conn.execute("INSERT INTO devices VALUES ('Old', 'tokO', 'x', false)")
    sha3 = "ab" * 32
    registry = PgRegistry(pg_url, "the registry")
    try:
        assert registry.entries() == [Entry("Old", "tokO", "x")]
        registry.add("Pend", "tokP", "x", pending=True)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            columns = {row[0] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'devices'")}
            # a certificate device has no token
            conn.execute("INSERT INTO devices (name, type, cert_sha3) VALUES ('C', 'x', %s)",
                         (sha3,))
        assert {"cert_sha3", "cert_pem", "psk_identity", "psk_key", "pending", "power_mode",
                "psm_activity_timer", "edrx_cycle", "paging_transmission_window"} <= columns
        snap = registry.load()
        assert snap.devices == {"tokO": Device("Old", "x")}
        assert snap.certificates == {sha3: Device("C", "x")}
        PgRegistry(pg_url, "again").close()  # migrating twice changes nothing
    finally:
        registry.close()


def test_the_database_gone_mid_command_is_unavailable(pg_url, postgres):
    import psycopg
    registry = PgRegistry(pg_url, "the registry", timeout=0.5)
    try:
        name = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            conn.execute("DROP DATABASE %s WITH (FORCE)" % name)
        with pytest.raises(RegistryUnavailable, match="the registry is unreachable"):
            registry.add("A", "t", "x")
        assert registry.reachable() is False
    finally:
        registry.close()


def test_a_registry_of_the_last_version_gets_the_power_columns(pg_url, postgres):
    """Migrated under the advisory lock: a table with every credential column, no power."""
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT UNIQUE, "
                     "type TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false, "
                     "pending BOOLEAN NOT NULL DEFAULT false, cert_sha3 TEXT UNIQUE, "
                     "cert_pem TEXT, psk_identity TEXT UNIQUE, psk_key BYTEA)")
        conn.execute("INSERT INTO devices (name, token, type) VALUES ('Old', 'tokO', 'x')")
    registry = PgRegistry(pg_url, "the registry")
    try:
        assert registry.set_power("Old", PowerSettings("PSM", 30000))
        assert registry.load().devices == {"tokO": Device("Old", "x", PowerSettings("PSM",
                                                                                    30000))}
    finally:
        registry.close()
