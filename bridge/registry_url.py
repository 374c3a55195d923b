"""Where the device registry lives: ``REGISTRY_URL`` read into a ``RegistryTarget``.

``sqlite:///PATH`` (the default, ``DATA_DIR/registry.sqlite3``, when the URL is
empty) or ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (``postgres://`` too, and
libpq's query parameters such as ``?sslmode=require``). The password may also
come from ``registry.password`` (``REGISTRY_PASSWORD``) or the first line of
``registry.password_file`` (``REGISTRY_PASSWORD_FILE``, a mounted secret); it
then wins over one in the URL. Pure: the configuration checks the URL with it,
before anything is opened; ``display`` is the URL without its password, for logs
and error lines.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class BadRegistryUrl(ValueError):
    """The URL cannot name a registry: the message says why, without the password."""


@dataclass(frozen=True)
class RegistryTarget:
    kind: str  # SQLITE or POSTGRESQL
    path: str = ""  # SQLite: the file
    conninfo: str = ""  # PostgreSQL: a libpq URI (with the password, never logged)
    display: str = ""  # for logs: the URL without its password

    @property
    def shared(self) -> bool:
        return self.kind == POSTGRESQL


def parse(url: str, default_path: str, password: Optional[str] = None) -> RegistryTarget:
    """The registry ``url`` names (empty: SQLite at ``default_path``); ``password``, when
    given, replaces the URL's. Raises ``BadRegistryUrl``."""
    url = url.strip()
    if not url:
        return RegistryTarget(SQLITE, path=default_path, display="sqlite:///" + default_path)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise BadRegistryUrl("expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    if scheme == SQLITE:
        # sqlite:///relative/or/absolute as in SQLAlchemy: three slashes, then the path
        # (sqlite:////var/lib/x is /var/lib/x; sqlite:///data/x is data/x)
        if not rest.startswith("/") or len(rest) < 2:
            raise BadRegistryUrl("a SQLite URL is sqlite:///PATH (three slashes, then the file)")
        path = unquote(rest[1:])
        return RegistryTarget(SQLITE, path=path, display="sqlite:///" + path)
    if scheme not in ("postgresql", "postgres"):
        raise BadRegistryUrl("unknown scheme %r: use sqlite:///PATH or postgresql://..." % scheme)
    return _postgresql(url, password)


def _postgresql(url: str, password: Optional[str]) -> RegistryTarget:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when it is not a number or out of range
    except ValueError as exc:
        raise BadRegistryUrl("bad PostgreSQL URL: %s" % exc)
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise BadRegistryUrl("a PostgreSQL URL names its database: "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB")
    if parts.fragment:
        raise BadRegistryUrl("a PostgreSQL URL has no #fragment")
    host = parts.hostname or ""
    user = parts.username
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    netloc_host = "[%s]" % host if ":" in host else host
    hostport = netloc_host + (":%d" % port if port is not None else "")
    query = "?" + parts.query if parts.query else ""

    def build(secret: Optional[str]) -> str:
        userinfo = ""
        if user is not None:
            userinfo = user  # kept as given (percent-encoded where it must be)
            if secret is not None:
                userinfo += ":" + quote(secret, safe="")
            userinfo += "@"
        elif secret is not None:
            userinfo = ":%s@" % quote(secret, safe="")
        return "postgresql://%s%s/%s%s" % (userinfo, hostport, quote(database, safe=""), query)

    return RegistryTarget(POSTGRESQL, conninfo=build(password),
                          display=build("***" if password else None).replace("%2A%2A%2A", "***"))


def driver_available() -> bool:
    """Whether this interpreter can use PostgreSQL: psycopg and its pool installed, and
    CPython (see bridge/registry_pg.py on PyPy), without importing them."""
    return platform.python_implementation() == "CPython" and all(
        importlib.util.find_spec(name) is not None for name in ("psycopg", "psycopg_pool"))
