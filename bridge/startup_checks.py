"""The start-up checks that need the machine: files, OpenSSL, protoc, psycopg.

``bridge.settings`` checks values; what it cannot know without I/O is checked here, once,
before any socket opens, and reported with its problems in one ``ConfigError``:

* the files settings name: the MQTT TLS files exist, ``ota.directory`` is a directory,
  ``registry.password_file`` is read (the password goes into the configuration);
* the device profiles: exported ThingsBoard profiles read (their payload settings, device
  type and power saving), then each profile checked by its payload format
  (``core.formats.registry``: the format's own keys, given raw in ``format_keys``, typed
  and checked against the format's settings, then its pure check) and its start-up check
  run: for PROTOBUF the schema files read, left-out schemas given ThingsBoard's defaults
  and compiled by ``protoc``, for EFENTO Efento's messages compiled (``edge.protoc``);
* a PostgreSQL registry has psycopg to reach it;
* OpenSSL loads the DTLS certificate, key (with its password) and CA file and accepts the
  cipher list (``edge.dtls.check_config``).

They live outside ``bridge.settings`` so that the schema stays pure (tested without files,
importable by the core); they run where the bridge runs (the files mounted in its container
are the ones that count). ``tap.py``, ``coapbridge check-config`` and the supervisor load
their configuration through ``load``.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import replace
from typing import Any, List, Mapping, Optional, Tuple

from . import registry_url
from .settings import Config, ConfigError, DeviceProfileConfig, Loaded, read, read_text
from .settings import reliable
from .settings.profiles import COMMON_KEYS, client_settings, given_keys


def load(path: Optional[str], env: Optional[Mapping[str, str]] = None,
         formats: Any = None) -> Config:
    """The configuration of ``path`` (None: defaults and environment) with every check
    passed (raises ``ConfigError`` listing every problem); ``formats``: the payload
    formats' registry (default: the installed formats)."""
    return checked(read(path, env), formats)


def load_text(text: str, env: Mapping[str, str], source: str = "configuration",
              formats: Any = None) -> Config:
    return checked(read_text(text, env, source), formats)


def checked(loaded: Loaded, formats: Any = None) -> Config:
    config, problems = check(loaded.config, list(loaded.problems), formats)
    if problems:
        raise ConfigError(problems, loaded.source)
    loaded.config = config
    return config


def check(config: Config, problems: List[str], formats: Any = None
          ) -> Tuple[Config, List[str]]:
    """``config`` with what the files hold (registry password, schemas), and ``problems``
    with those found here appended."""
    _files(config, problems)
    config = _registry(config, problems)
    config = _profiles(config, problems, formats)
    if config.dtls.enabled:
        from .edge import dtls as dtls_edge  # OpenSSL: only when DTLS is on
        problems.extend(dtls_edge.check_config(config.dtls))
    files = reliable.tls_files(config)
    if set(reliable.enabled(config)) & {"tls", "wss"} and files.cert_file:
        from .edge import tls as tls_edge  # OpenSSL: only when TLS is on
        problems.extend(tls_edge.check_config(files))
    return config, problems


def _files(config: Config, problems: List[str]) -> None:
    tls = config.mqtt.tls
    if tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path and not os.path.isfile(path):
                problems.append("mqtt.tls.%s: file %s does not exist" % (key, path))
    if config.ota.source == "directory" and config.ota.directory and \
            not os.path.isdir(config.ota.directory):
        problems.append("ota.directory: %r is not a directory" % config.ota.directory)


def _registry(config: Config, problems: List[str]) -> Config:
    """The password read from ``registry.password_file``; psycopg there for PostgreSQL."""
    settings = config.registry
    if settings.password_file:
        try:
            with open(settings.password_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            problems.append("registry.password_file: cannot read %s: %s"
                            % (settings.password_file, exc.strerror))
        else:
            config = replace(config, registry=replace(
                settings, password=lines[0] if lines else ""))
    try:
        target = config.registry_target
    except registry_url.BadRegistryUrl:  # reported by the settings
        return config
    if target.shared and not registry_url.driver_available():
        problems.append("registry.url: a PostgreSQL registry needs the postgresql extra "
                        "(pip install 'coapbridge[postgresql]', on CPython: psycopg does not "
                        "run on PyPy 7.3.11), or use SQLite")
    return config


def _profiles(config: Config, problems: List[str], formats: Any = None) -> Config:
    """Each profile checked by its payload format (``formats``: the registry,
    ``core.formats.registry.INSTALLED`` unless given), exported ones read first; then the
    format's start-up check (for PROTOBUF: the schemas read from their files, or
    ThingsBoard's defaults, compiled and checked, every problem with its line and column)."""
    from .core.formats import registry
    formats = formats or registry.INSTALLED
    profiles = {}
    for name, profile in config.device_profiles.items():
        where = "device_profiles.%s." % name
        if profile.thingsboardProfile and not given_keys(profile):
            profile = _exported(profile, where, problems, formats)
        entry, profile, found = formats.checked(profile, where)  # its format's keys typed
        problems.extend(found)
        if entry is not None and entry.startup:
            module, function = entry.startup.split(":")
            profile = getattr(importlib.import_module(module), function)(
                profile, where, problems)
        profiles[name] = profile
    return replace(config, device_profiles=profiles)


def _exported(profile: DeviceProfileConfig, where: str, problems: List[str],
              formats: Any) -> DeviceProfileConfig:
    """The settings of ``thingsboardProfile``, a device profile exported from ThingsBoard."""
    from .core.formats import tbprofile
    where += "thingsboardProfile"
    path = profile.thingsboardProfile
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        problems.append("%s: cannot read %s: %s" % (where, path, exc.strerror))
        return profile
    except ValueError as exc:  # also not UTF-8
        problems.append("%s: %s is not JSON: %s" % (where, path, exc))
        return profile
    try:
        settings = tbprofile.payload_settings(doc, formats)
    except tbprofile.NotUsable as exc:
        problems.append("%s: %s: %s" % (where, path, exc))
        return profile
    if "clientSettings" in settings:
        found: List[str] = []
        settings["clientSettings"] = client_settings(
            settings["clientSettings"], where.rsplit(".", 1)[0] + ".clientSettings.", found)
        problems.extend("%s (in %s)" % (problem, path) for problem in found)
    common = {key: settings.pop(key) for key in COMMON_KEYS if key in settings}
    return replace(profile, format_keys=settings, **common)  # the rest: the format's keys
