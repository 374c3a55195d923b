"""Fixtures every test folder may use: a private PostgreSQL cluster (tests/pgcluster.py)."""

from __future__ import annotations

import pytest

import pgcluster
from bridge.registry_url import driver_available


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL server for the whole run, torn down at its end; skipped
    (saying why) only where PostgreSQL is not installed."""
    if not driver_available():
        pytest.skip("psycopg is not installed for this interpreter (setup.cfg installs it on "
                    "CPython only: it does not run on PyPy 7.3.11)")
    bin_dir = pgcluster.bindir()
    if bin_dir is None:
        pytest.skip("PostgreSQL not found (no initdb/pg_ctl in /usr/lib/postgresql/*/bin, "
                    "PG_BINDIR or PATH): install Debian's postgresql package "
                    "(scripts/install.sh system --test)")
    cluster = pgcluster.Cluster(bin_dir)
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(postgres):
    """The URL (with password) of a fresh, empty database on the session's server."""
    return postgres.create_database()
