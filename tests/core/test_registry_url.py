"""REGISTRY_URL and its password settings (bridge.registry_url, bridge.settings): pure."""

import os

import pytest

from bridge import registry_url
from bridge import settings as config_module
from bridge import startup_checks
from bridge.registry_url import POSTGRESQL, SQLITE, BadRegistryUrl, driver_available, parse

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")


def load(**env):
    return startup_checks.load(SHIPPED, env)


# a PostgreSQL URL is a configuration error where psycopg cannot run (PyPy): tested below
needs_driver = pytest.mark.skipif(not driver_available(),
                                  reason="psycopg does not run on this interpreter (PyPy)")


def test_the_default_is_sqlite_in_data_dir():
    target = load(DATA_DIR="/srv/cb").registry_target
    assert (target.kind, target.path, target.shared) == (
        SQLITE, os.path.join("/srv/cb", "registry.sqlite3"), False)


def test_a_sqlite_url_names_its_file_relative_or_absolute():
    assert parse("sqlite:////var/lib/cb/r.db", "unused").path == "/var/lib/cb/r.db"
    assert parse("sqlite:///data/r.db", "unused").path == "data/r.db"


@needs_driver
def test_a_postgresql_url_keeps_its_parameters_and_hides_its_password_in_display():
    target = load(REGISTRY_URL="postgresql://coap:s%40cret@db.example:6432/fleet?"
                               "sslmode=require").registry_target
    assert target.kind == POSTGRESQL and target.shared
    assert target.conninfo == "postgresql://coap:s%40cret@db.example:6432/fleet?sslmode=require"
    assert target.display == "postgresql://coap:***@db.example:6432/fleet?sslmode=require"
    assert parse("postgres://coap@db/fleet", "").display == "postgresql://coap@db/fleet"


@needs_driver
def test_registry_password_wins_over_the_urls_and_is_quoted():
    target = load(REGISTRY_URL="postgresql://coap:old@db/fleet",
                  REGISTRY_PASSWORD="n:w/p@ss").registry_target
    assert target.conninfo == "postgresql://coap:n%3Aw%2Fp%40ss@db/fleet"
    assert "n:w" not in target.display


@needs_driver
def test_the_password_file_gives_its_first_line(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\nignored\n")
    config = load(REGISTRY_URL="postgresql://coap@db/fleet", REGISTRY_PASSWORD_FILE=str(secret))
    assert config.registry_target.conninfo == "postgresql://coap:from-a-file@db/fleet"


def test_registry_problems_are_reported_with_the_others(tmp_path):
    with pytest.raises(config_module.ConfigError) as info:
        load(REGISTRY_URL="postgresql://db:99999/fleet", REGISTRY_PASSWORD="x",
             REGISTRY_PASSWORD_FILE=str(tmp_path / "missing"), REGISTRY_POOL_SIZE="0",
             COAP_BIND_PORT="0")
    problems = info.value.problems
    assert "registry: give password or password_file, not both" in problems
    assert any(p.startswith("registry.password_file: cannot read ") for p in problems)
    assert "registry.url: bad PostgreSQL URL: Port out of range 0-65535" in problems
    assert "registry.pool_size: must be 1 to 100, got 0" in problems
    assert any(p.startswith("coap.bind_port") for p in problems)


@pytest.mark.parametrize("url, message", [
    ("mysql://db/x", "unknown scheme 'mysql'"),
    ("just-a-path", "expected sqlite:///PATH or postgresql://"),
    ("sqlite://relative", "three slashes"),
    ("postgresql://db/", "names its database"),
    ("postgresql://db:port/x", "bad PostgreSQL URL"),
    ("postgresql://db/x#frag", "no #fragment"),
])
def test_a_malformed_url_is_refused_saying_why(url, message):
    with pytest.raises(BadRegistryUrl, match=message):
        parse(url, "")
    with pytest.raises(config_module.ConfigError, match="registry.url: .*" + message):
        load(REGISTRY_URL=url)


def test_a_bad_url_never_shows_its_password():
    with pytest.raises(BadRegistryUrl) as info:
        parse("postgresql://u:hunter2@db:badport/x", "")
    assert "hunter2" not in str(info.value)


def test_without_the_driver_a_postgresql_url_is_one_line_naming_the_extra(monkeypatch):
    # (tests/artifact runs it for real, in an install without the extra)
    monkeypatch.setattr(registry_url, "driver_available", lambda: False)
    with pytest.raises(config_module.ConfigError) as info:
        load(REGISTRY_URL="postgresql://coap@db/fleet")
    assert info.value.problems == [
        "registry.url: a PostgreSQL registry needs the postgresql extra (pip install "
        "'coapbridge[postgresql]', on CPython: psycopg does not run on PyPy 7.3.11), or use "
        "SQLite"]
