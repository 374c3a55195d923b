"""``registry:``: where the device registry is (SQLite in DATA_DIR, or PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import registry_url
from .schema import Problems, setting


@dataclass(frozen=True)
class RegistryConfig:
    """The device registry (access tokens, certificates, PSKs; `coapbridge devices ...`
    writes it). Empty url: SQLite in DATA_DIR/registry.sqlite3, for one host. Several
    instances share one registry in PostgreSQL (psycopg 3): the schema is created and
    migrated at start, and a change made by any instance or CLI reaches every bridge within
    a second (LISTEN/NOTIFY). Unreachable at start: the bridge refuses to start (exit 2);
    lost or hung while running: it serves its last copy, retries, and /readyz says so; the
    platform's renames and deletes wait in DATA_DIR/registry-journal.sqlite3 meanwhile."""
    url: str = setting(
        "", "sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB (libpq parameters "
        "too: ?sslmode=require). Empty: SQLite at DATA_DIR/registry.sqlite3.",
        secret="url")
    password: str = setting("", "The PostgreSQL password, if not in the URL (it then wins "
                            "over the URL's).", secret="hidden")
    password_file: str = setting("", "A file whose first line is the password (a mounted "
                                 "secret); give password or password_file.")
    pool_size: int = setting(4, "PostgreSQL connections for writes (provisioning, X.509 "
                             "auto-registration); one more listens for changes and applies "
                             "the platform's renames and deletes.",
                             low=1, high=100)


def check(config: Any, problems: Problems) -> None:
    registry = config.registry
    if registry.password_file and registry.password:
        problems.add("registry.password", "registry: give password or password_file, not both")
    try:
        registry_url.parse(registry.url, config.registry_path, registry.password or None)
    except registry_url.BadRegistryUrl as exc:
        problems.add("registry.url", "registry.url: %s" % exc)
