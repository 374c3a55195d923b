"""Loading: defaults, then the YAML file (optional), then the environment; every problem
at once.

Precedence: an environment variable over the file over the default. Each setting is read
from its derived name (``schema.env_name``: ``coap.max_body`` -> ``COAP_MAX_BODY``), or
from one of its aliases (today's documented names, ThingsBoard's), with or without a file;
two of its names set to different values is a problem. A deprecated name is read with a
warning, and the new name wins. A list or mapping (``device_profiles``,
``provisioning.profiles``) takes YAML or JSON text of the same structure. In the file,
scalars may use ThingsBoard's ``${NAME:default}`` (``${NAME}``: unset is a problem).

A variable that looks like ours (``PREFIXES``) but names no setting is a problem naming
the nearest known name, unless the file refers to it, it is one the bridge's processes
set (``PROCESS_VARIABLES``), or Kubernetes made it for a Service (``service_link``).

Pure but for reading the file itself: the checks that need files, OpenSSL, protoc or
psycopg are ``bridge.startup_checks``.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from . import dtls as dtls_section
from . import mqtt as mqtt_section
from .errors import ConfigDeprecationWarning, ConfigError
from .root import Config, check
from .schema import (EXTRA, ITEMS, RULE, Problems, Rule, Setting, canonical, check_value,
                     is_section, walk)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")

SETTINGS: Dict[str, Setting] = {s.path: s for s in walk(Config)}
# keys renamed: old dotted key -> new (the old still read, with a warning)
RENAMED_KEYS = {"mqtt." + old: "mqtt." + new for old, new in mqtt_section.RENAMED_KEYS.items()}
# variables the bridge's own processes read or set, beside the settings
PROCESS_VARIABLES = {
    "COAPBRIDGE_CONFIG": "the configuration file (else ./conf/coapbridge.yaml when present, "
                         "else none: defaults and environment only)",
    "COAPBRIDGE_WORKER": "set by the supervisor in a worker's environment (coap.workers > 1); "
                         "never set it yourself",
    "COAPBRIDGE_COAP_FD": "set by the supervisor in a worker's environment: the descriptor "
                          "of the worker's CoAP socket, which the supervisor holds; never "
                          "set it yourself",
    "COAPBRIDGE_DTLS_FD": "set by the supervisor in a worker's environment: the descriptor "
                          "of the worker's CoAPs socket; never set it yourself",
    **{"COAPBRIDGE_%s_FD" % name: "set by the supervisor in a worker's environment: the "
       "descriptor of the %s listening socket, shared by all workers; never set it "
       "yourself" % scheme for name, scheme in (("TCP", "coap+tcp"), ("TLS", "coaps+tcp"),
                                               ("WS", "coap+ws"), ("WSS", "coaps+ws"))},
}
# what Kubernetes sets for each Service in the namespace (and Docker's legacy links)
_SERVICE_LINK = re.compile(r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|"
                           r"PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?|ENV_[A-Z0-9_]+)$")
_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://")


def service_link(name: str, value: str) -> bool:
    """Whether ``name`` is one Kubernetes sets for a Service (``COAPBRIDGE_SERVICE_HOST``,
    ``COAPBRIDGE_PORT=udp://10.0.0.1:5683``...), not a setting someone mistyped."""
    return bool(_SERVICE_LINK.match(name)) or (name.endswith("_PORT")
                                               and bool(_LINK_VALUE.match(value)))


def _names() -> Dict[str, Tuple[Setting, str]]:
    """Every environment name -> (its setting, "name" | "alias" | "deprecated")."""
    table: Dict[str, Tuple[Setting, str]] = {}
    for s in SETTINGS.values():
        for n, name in enumerate(s.names):
            table[name] = (s, "name" if n == 0 else "alias")
        for name in s.rule.deprecated:
            table[name] = (s, "deprecated")
    return table


ENV_NAMES = _names()
# First words of our names too generic to claim every variable that starts with them
# (DATA_DIR's DATA_: a container may well have DATA_HOME for another program).
_GENERIC_WORDS = frozenset({"DATA_"})
# Names that look like ours: the first word of each setting's and process variable's
# names (so a new section's variables are checked the day it is added: RELIABLE_* were
# not before), and the words people reach for by mistake (COAPS_ for COAP_DTLS_,
# PROVISION_ for PROVISIONING_).
PREFIXES = tuple(sorted(({name.split("_", 1)[0] + "_"
                          for name in (*ENV_NAMES, *PROCESS_VARIABLES)}
                         - _GENERIC_WORDS) | {"COAPS_", "PROVISION_"}))


@dataclass
class Loaded:
    """A configuration as read, where each value came from, and its problems (the start-up
    checks add theirs before anything is refused)."""
    config: Config
    problems: List[str]
    origins: Dict[str, str] = field(default_factory=dict)  # dotted path -> where from
    source: str = "built-in defaults"


def coerce(value: Any, target: Any) -> Tuple[Any, Optional[str]]:
    """``value`` as the type of ``target``, or (target, what was expected)."""
    kind = type(target)
    if kind is bool:
        if isinstance(value, bool):
            return value, None
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True, None
        if text in ("false", "no", "off", "0", ""):
            return False, None
        return target, "expected true or false"
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        try:
            return int(str(value).strip()), None
        except ValueError:
            return target, "expected an integer"
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        try:
            return float(str(value).strip()), None
        except ValueError:
            return target, "expected a number"
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value), None
    return target, "expected a string"


class _Reader:
    """One load: the file's raw values and lines, the environment, what was found."""

    def __init__(self, env: Mapping[str, str], source: str, lines: Dict[str, int]):
        self.env = env
        self.source = source
        self.lines = lines
        self.problems = Problems()
        self.origins: Dict[str, str] = {}
        self.notes: List[str] = []

    def where(self, path: str) -> str:
        line = self.lines.get(path)
        return "%s:%d" % (self.source, line) if line else self.source

    def section(self, cls: Any, raw: Any, prefix: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problems.add(prefix[:-1], "%s: expected a mapping, got %r"
                              % (prefix[:-1] or "top level", raw))
            raw = {}
        raw = self.renamed(raw, prefix)
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                self.problems.add(prefix + str(key), "%s: unknown key (known: %s)"
                                  % (prefix + str(key), ", ".join(sorted(known))))
        values = {}
        for f in fields(cls):
            if is_section(f):
                values[f.name] = self.section(f.default_factory, raw.get(f.name),
                                              prefix + f.name + ".")
            else:
                values[f.name] = self.value(SETTINGS[prefix + f.name], raw, f.name)
        return cls(**values)

    def renamed(self, raw: Dict[str, Any], prefix: str) -> Dict[str, Any]:
        for old, new in RENAMED_KEYS.items():
            section, _, old_key = old.rpartition(".")
            if prefix != section + "." or old_key not in raw:
                continue
            self.notes.append("%s is deprecated: call it %s" % (old, new))
            raw = dict(raw)
            value = raw.pop(old_key)
            raw.setdefault(new.rpartition(".")[2], value)
            if old in self.lines:
                self.lines.setdefault(new, self.lines[old])
        return raw

    def value(self, s: Setting, raw: Dict[str, Any], key: str) -> Any:
        given = self.from_env(s)
        if given is not None:
            name, text = given
            self.origins[s.path] = "variable " + name
            if s.items is not None:
                try:
                    structure = yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    self.problems.add(s.path, "%s: %s is not YAML or JSON: %s"
                                      % (s.path, name, str(exc).replace("\n", " ")))
                    return s.default
                return self.structure(s, structure, expand=False)
            return self.scalar(s, text, "variable " + name)
        if key not in raw:
            self.origins[s.path] = "default"
            return s.default
        self.origins[s.path] = "file " + self.where(s.path)
        if s.items is not None:
            return self.structure(s, raw[key], expand=True)
        value = raw[key]
        if isinstance(value, str):
            value, names = self.expand(value, s.path)
            if value is None:
                return s.default
            if names:
                self.origins[s.path] = "variable %s (file %s)" % (", ".join(names),
                                                                  self.where(s.path))
        return self.scalar(s, value, None)

    def from_env(self, s: Setting) -> Optional[Tuple[str, str]]:
        """(name, value) of the variable that sets ``s``, if any."""
        found = [(name, self.env[name]) for name in s.names if name in self.env]
        for old in s.rule.deprecated:
            if old in self.env:
                self.notes.append("environment variable %s is deprecated: call it %s"
                                  % (old, s.env))
                found.append((old, self.env[old]))  # after the others: they win
        if not found:
            return None
        current = [(name, text) for name, text in found if name not in s.rule.deprecated]
        if len({text for _, text in current}) > 1:
            self.problems.add(s.path, "%s: %s set it to different values: give one of them"
                              % (s.path, " and ".join(name for name, _ in current)))
        return found[0]

    def scalar(self, s: Setting, value: Any, variable: Optional[str]) -> Any:
        return self.checked(s.path, s.rule, s.default, value, variable)

    def checked(self, path: str, rule: Rule, default: Any, value: Any,
                variable: Optional[str]) -> Any:
        result, expected = coerce(value, default)
        if expected is not None:
            hint = ""
            if variable and isinstance(value, str) and _LINK_VALUE.match(value):
                hint = (" (%s looks like the address Kubernetes sets for a Service of that "
                        "name: set enableServiceLinks: false in the pod spec, or give the "
                        "setting in the configuration file)" % variable.split()[-1])
            self.problems.add(path, "%s: %s, got %r%s" % (path, expected, value, hint))
            return default
        result = canonical(rule, result)
        problem = check_value(path, rule, default, result)
        if problem is not None:
            self.problems.add(path, problem)
        return result

    def structure(self, s: Setting, raw: Any, expand: bool) -> Any:
        if raw is None:
            return s.default
        if isinstance(s.default, dict):
            if not isinstance(raw, dict):
                self.problems.add(s.path, "%s: expected a mapping of device types" % s.path)
                return s.default
            return {str(key): self.item(s.items, item, "%s.%s." % (s.path, key), expand)
                    for key, item in raw.items()}
        if not isinstance(raw, list):
            self.problems.add(s.path, "%s: expected a list" % s.path)
            return s.default
        return tuple(self.item(s.items, item, "%s[%d]." % (s.path, n), expand)
                     for n, item in enumerate(raw))

    def item(self, cls: Any, raw: Any, prefix: str, expand: bool) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problems.add(prefix[:-1], "%s: expected a mapping, got %r" % (prefix[:-1], raw))
            return cls()
        spare = [f.name for f in fields(cls) if EXTRA in f.metadata]
        known = {f.name for f in fields(cls) if EXTRA not in f.metadata}
        others = {str(key): value for key, value in raw.items() if key not in known}
        values: Dict[str, Any] = {}
        if spare:  # kept as given, for the layer that types them
            values[spare[0]] = self.others(others, prefix, expand)
        else:
            for key in others:
                self.problems.add(prefix + key, "%s: unknown key (known: %s)"
                                  % (prefix + key, ", ".join(sorted(known))))
        for f in fields(cls):
            if f.name not in raw or f.name not in known:
                continue
            value = raw[f.name]
            if ITEMS in f.metadata:  # an item inside the item (clientSettings)
                values[f.name] = self.item(f.metadata[ITEMS], value, prefix + f.name + ".",
                                           expand)
                continue
            if value is None and f.metadata[RULE].nullable:
                continue  # null: not given
            if expand and isinstance(value, str):
                value, _ = self.expand(value, prefix + f.name)
                if value is None:
                    continue
            values[f.name] = self.checked(prefix + f.name, f.metadata["coapbridge.rule"],
                                          f.default, value, None)
        return cls(**values)

    def others(self, raw: Dict[str, Any], prefix: str, expand: bool) -> Mapping[str, Any]:
        """An item's keys it does not declare, as given (``${NAME}`` expanded in the file;
        null: not given)."""
        kept: Dict[str, Any] = {}
        for key, value in raw.items():
            if expand and isinstance(value, str):
                value, _ = self.expand(value, prefix + key)
            if value is not None:
                kept[key] = value
        return MappingProxyType(kept)

    def expand(self, text: str, path: str) -> Tuple[Optional[str], List[str]]:
        """``${NAME:default}`` references expanded, and the variables used; None when one
        without a default is unset (reported)."""
        used: List[str] = []
        missing: List[str] = []

        def one(match: "re.Match[str]") -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env:
                used.append(name)
                return self.env[name]
            if default is None:
                missing.append(name)
                return ""
            return default
        result = _ENV_REF.sub(one, text)
        for name in missing:
            self.problems.add(path, "%s: environment variable %s is not set and has no "
                              "default" % (path, name))
        return (None if missing else result), used

    def unknown_variables(self, referenced: set) -> None:
        known = sorted(ENV_NAMES)
        for name in sorted(self.env):
            if name in ENV_NAMES or name in referenced or name in PROCESS_VARIABLES or \
                    not name.startswith(PREFIXES) or service_link(name, self.env[name]):
                continue
            if name in dtls_section.FOREIGN:
                self.problems.add(name, "environment variable %s %s"
                                  % (name, dtls_section.FOREIGN[name]))
                continue
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = "did you mean %s? " % near[0] if near else ""
            self.problems.add(name, "environment variable %s is no setting of coapbridge: "
                              "%s(`coapbridge config env` lists every one)" % (name, hint))


def typed_keys(cls: Any, raw: Mapping[str, Any], prefix: str, problems: List[str]) -> Any:
    """The keys of ``raw`` that item dataclass ``cls`` declares, typed and checked as the
    file's are (the same rules and lines; a bad value left at its default and said in
    ``problems``); ``prefix``: ``device_profiles.<type>.``. The other keys are the caller's."""
    reader = _Reader({}, "", {})
    names = {f.name for f in fields(cls)}
    item = reader.item(cls, {key: value for key, value in raw.items() if key in names},
                       prefix, expand=False)
    problems.extend(reader.problems.lines)
    return item


def _lines(text: str) -> Dict[str, int]:
    """Dotted path -> the line of its key in ``text`` (1-based)."""
    found: Dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return found

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    path = prefix + str(key.value)
                    found[path] = key.start_mark.line + 1
                    visit(value, path + ".")
    visit(root, "")
    return found


def read_text(text: str, env: Mapping[str, str], source: str = "configuration") -> Loaded:
    """The configuration in ``text`` under ``env``, its origins and problems (raises
    ``ConfigError`` only for YAML that does not parse)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(["YAML syntax error: %s" % str(exc).replace("\n", " ")], source)
    reader = _Reader(env, source, _lines(text))
    config = reader.section(Config, raw, "")
    reader.unknown_variables({match.group(1) for match in _ENV_REF.finditer(text)})
    for note in reader.notes:  # one line each, naming the file (Twisted logs warnings)
        warnings.warn_explicit(note, ConfigDeprecationWarning, source, 0)
    check(config, reader.problems)
    return Loaded(config, reader.problems.lines, reader.origins, source)


def read(path: Optional[str], env: Optional[Mapping[str, str]] = None) -> Loaded:
    """``read_text`` of the file ``path``, or of nothing (defaults and environment) when
    None."""
    env = os.environ if env is None else env
    if path is None:
        return read_text("", env, "built-in defaults")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(["cannot read %s: %s" % (path, exc.strerror)], path)
    return read_text(text, env, path)


def load_text(text: str, env: Mapping[str, str], source: str = "configuration") -> Config:
    """The configuration in ``text``, its own checks passed (no file, OpenSSL or protoc
    checks: ``bridge.startup_checks.load_text`` adds those)."""
    loaded = read_text(text, env, source)
    if loaded.problems:
        raise ConfigError(loaded.problems, source)
    return loaded.config


def load(path: Optional[str], env: Optional[Mapping[str, str]] = None) -> Config:
    loaded = read(path, env)
    if loaded.problems:
        raise ConfigError(loaded.problems, loaded.source)
    return loaded.config


def default_path(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``$COAPBRIDGE_CONFIG``, else ``conf/coapbridge.yaml`` when present, else None."""
    env = os.environ if env is None else env
    if env.get("COAPBRIDGE_CONFIG"):
        return env["COAPBRIDGE_CONFIG"]
    if os.path.isfile(os.path.join("conf", "coapbridge.yaml")):
        return os.path.join("conf", "coapbridge.yaml")
    return None
