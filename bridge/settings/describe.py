"""The schema told to people: ``coapbridge config env`` and ``config show``,
docs/configuration.md and the commented conf/coapbridge.yaml, all rendered from the
dataclasses' fields (tests/core/test_settings_docs.py fails when a file and the schema
disagree; ``make docs`` writes both again).
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import fields, is_dataclass
from typing import Any, Dict, List, Sequence, Tuple

from .loader import ENV_NAMES, PREFIXES, PROCESS_VARIABLES, SETTINGS, Loaded
from .root import Config
from .schema import (EXTRA, ITEMS, RULE, Rule, Setting, choices_of, is_section, number,
                     range_text)

_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def shown(value: Any) -> str:
    """A value as YAML writes it: "text", 5683, 0.5, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True)


def masked(rule: Rule, value: Any) -> Any:
    """``value`` with a secret hidden: passwords and keys as ***, a token as its first four
    characters, the password in a URL as ***."""
    if not rule.secret or not value or not isinstance(value, str):
        return value
    if rule.secret == "token":
        return value[:4] + "***"
    if rule.secret == "url":
        return _URL_PASSWORD.sub(r"\1***@", value)
    return "***"


def plain(item: Any) -> Dict[str, Any]:
    """An item dataclass as the mapping a file would give, its secrets masked and its
    defaults left out."""
    unset = type(item)()
    found = {f.name: plain(getattr(item, f.name)) if ITEMS in f.metadata
             else masked(f.metadata[RULE], getattr(item, f.name)) for f in fields(item)
             if EXTRA not in f.metadata and getattr(item, f.name) != getattr(unset, f.name)}
    for f in fields(item):
        if EXTRA in f.metadata:  # its other keys, as given
            found.update(getattr(item, f.name))
    return found


def value_of(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def show(loaded: Loaded) -> List[str]:
    """``coapbridge config show``: every setting's effective value (secrets masked) and where
    it came from."""
    rows = []
    for s in SETTINGS.values():
        value = value_of(loaded.config, s.path)
        if isinstance(value, dict):
            value = {key: plain(item) for key, item in value.items()}
        elif isinstance(value, tuple):
            value = [plain(item) for item in value]
        else:
            value = masked(s.rule, value)
        rows.append((s.path, shown(value), loaded.origins.get(s.path, "default")))
    width = max(len(path) for path, _, _ in rows)
    return ["%-*s  %s  (%s)" % (width, path, value, origin) for path, value, origin in rows]


def env_rows() -> List[Tuple[str, str, str, str]]:
    """(variable, setting, default, meaning) of every variable, aliases after their setting."""
    rows = []
    for s in SETTINGS.values():
        rows.append((s.env, s.path, _default(s), s.meaning))
        for name in s.names[1:]:
            rows.append((name, s.path, "", "the same as %s" % s.env))
        for name in s.rule.deprecated:
            rows.append((name, s.path, "", "deprecated: call it %s" % s.env))
    for name, meaning in PROCESS_VARIABLES.items():
        rows.append((name, "-", "", meaning))
    return rows


def env_lines() -> List[str]:
    """``coapbridge config env``: one line per variable."""
    rows = [("VARIABLE", "SETTING", "DEFAULT", "MEANING")] + env_rows()
    widths = [max(len(row[n]) for row in rows) for n in (0, 1, 2)]
    return [("%-*s  %-*s  %-*s  %s" % (widths[0], name, widths[1], path, widths[2], default,
                                       meaning)).rstrip()
            for name, path, default, meaning in rows]


def _default(s: Setting) -> str:
    if s.items is not None:
        return "{}" if isinstance(s.default, dict) else "[]"
    if len(str(s.default)) > 40:
        return "(long; see docs/configuration.md)"
    return shown(s.default)


def _values(rule: Rule) -> str:
    if rule.choices:
        return choices_of(rule)
    text = range_text(rule)
    if rule.address:
        return "an IP address"
    return text


# -- docs/configuration.md ---------------------------------------------------------------

DOC_HEAD = """# Configuration

<!-- Generated from bridge/settings by `coapbridge config doc` (make docs): do not edit;
tests/core/test_settings_docs.py fails when this file and the schema disagree. -->

Every setting has a default (below), may be given in the YAML file
(`--config FILE`, else `$COAPBRIDGE_CONFIG`, else `./conf/coapbridge.yaml` when present;
no file is fine) and may come from the environment, with or without a file.
**Precedence: an environment variable over the file over the default.**

* A setting's variable is its path upper-cased, dots as underscores:
  `coap.max_body` is `COAP_MAX_BODY`, `limits.device_rate` is `LIMITS_DEVICE_RATE`,
  `dtls.x509.cn_regex` is `DTLS_X509_CN_REGEX`. Older documented names
  (`LIMIT_DEVICE_RATE`, `DEVICE_IDLE_TIMEOUT`, `COAP_DTLS_*`, `MQTT_TLS`) and
  ThingsBoard's (`COAP_DTLS_PEM_CERT`, `COAP_DTLS_PEM_KEY`, `COAP_DTLS_PEM_KEY_PASSWORD`,
  `COAP_DTLS_CREDENTIALS_TYPE`) are aliases; two names of one setting set to different
  values is an error. `MQTT_ACK_TIMEOUT` is read with a deprecation warning (the new name
  wins).
* A list or mapping takes YAML or JSON text of the same structure in one variable:
  `DEVICE_PROFILES='{"sensor": {"transportPayloadType": "PROTOBUF"}}'`,
  `PROVISIONING_PROFILES='[{"key": "k", "secret": "s", "device_type": "sensor"}]'`.
* In the file, any scalar may use ThingsBoard's `${NAME:default}` (`${NAME}`: unset is an
  error).
* A variable that looks like one of ours but names no setting stops the start with the
  nearest known name, unless the file refers to it by `${...}`. Ours start with
  %(prefixes)s.
  The variables Kubernetes sets for a Service (`NAME_SERVICE_HOST`,
  `NAME_PORT=udp://...`) are not taken for ours; a Service named like a section (`mqtt`)
  gives `MQTT_PORT` its address: set `enableServiceLinks: false` in the pod spec.
* Every number has a range (below): a value outside it, `inf` or `nan`, is refused with
  one line. Bind addresses are IP addresses (names are not resolved: a name may stand for
  several addresses, or change while the bridge runs); an address this host does not have
  is refused at start.
* `coapbridge check-config` checks it all; `coapbridge config show` prints every value
  with where it came from (default, file:line, variable), secrets masked;
  `coapbridge config env` lists every variable.
"""


Keys = Sequence[Tuple[str, Any]]  # (whose, its keys' dataclass): the keys of an item's extra


def markdown(extra_keys: Keys = ()) -> str:
    """docs/configuration.md; ``extra_keys``: the keys an item takes beside its own, each
    group's dataclass of settings (a device profile's: the payload formats' keys, which
    ``coapbridge config doc`` gives, ``cli_config.format_keys``)."""
    prefixes = ", ".join("`%s`" % prefix for prefix in PREFIXES)
    parts = [DOC_HEAD % {"prefixes": prefixes}]
    parts += _section_docs(Config, "", extra_keys)
    parts.append("\n## Variables of the processes\n\n| Variable | Meaning |\n|---|---|\n")
    parts += ["| `%s` | %s |\n" % (name, meaning) for name, meaning in PROCESS_VARIABLES.items()]
    return "".join(parts)


def _section_docs(cls: Any, prefix: str, extra_keys: Keys) -> List[str]:
    own = [f for f in fields(cls) if not is_section(f)]
    parts = []
    if own:
        title = prefix[:-1] or "Top level"
        doc = " ".join((cls.__doc__ or "").split())
        parts.append("\n## %s\n\n%s\n\n" % (title, doc) if prefix else "\n## Top level\n\n")
        parts.append("| Setting | Variable | Default | Values | Meaning |\n|---|---|---|---|---|\n")
        for f in own:
            s = SETTINGS[prefix + f.name]
            names = "<br>".join("`%s`" % n for n in s.names + s.rule.deprecated)
            parts.append("| `%s` | %s | %s | %s | %s |\n" % (
                s.path, names, _cell(_doc_default(s)), _cell(_values(s.rule)),
                _cell(s.rule.text + (" Never printed: masked in `config show`."
                                     if s.rule.secret else ""))))
        for f in own:
            item = f.metadata.get(ITEMS)
            if item is not None:
                parts += _item_docs(prefix + f.name, item, extra_keys)
    for f in fields(cls):
        if is_section(f):
            parts += _section_docs(f.default_factory, prefix + f.name + ".", extra_keys)
    return parts


def _item_docs(path: str, item: Any, extra_keys: Keys) -> List[str]:
    doc = " ".join((item.__doc__ or "").split())
    parts = ["\n### Each entry of `%s`\n\n%s\n\n| Key | Default | Values | Meaning |\n"
             "|---|---|---|---|\n" % (path, doc)]
    inner = []
    for f in fields(item):
        rule = f.metadata[RULE]
        if ITEMS in f.metadata:
            parts.append("| `%s` | | a mapping (below) | %s |\n" % (f.name, _cell(rule.text)))
            inner += _item_docs("%s.%s" % (path, f.name), f.metadata[ITEMS], extra_keys)
            continue
        if EXTRA in f.metadata:  # its other keys: each group's rows, in its place
            parts += _key_rows(extra_keys) or ["| (other keys) | | | %s |\n" % _cell(rule.text)]
            continue
        parts += _key_rows([("", f)])
    return parts + inner


def _key_rows(groups: Any) -> List[str]:
    """A row per key: ``groups`` of (whose, a dataclass of settings or one field)."""
    rows = []
    for _, keys in groups:
        for f in fields(keys) if is_dataclass(keys) else [keys]:
            rule = f.metadata[RULE]
            rows.append("| `%s` | %s | %s | %s |\n" % (f.name, _cell(shown(f.default)),
                                                       _cell(_values(rule)), _cell(rule.text)))
    return rows


def _doc_default(s: Setting) -> str:
    if s.items is not None:
        return "`{}`" if isinstance(s.default, dict) else "`[]`"
    return "`%s`" % shown(s.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- conf/coapbridge.yaml ------------------------------------------------------------------

EXAMPLE_HEAD = """\
# coapbridge configuration: every setting, commented out at its default.
#
# Generated from bridge/settings by `coapbridge config example` (make docs): the defaults
# live in the schema only. Uncomment what you change. Every setting is also an
# environment variable (named on its line; the environment wins over this file), with or
# without a file: docs/configuration.md lists them all. A value here may use ThingsBoard's
# ${NAME:default} syntax (${NAME}: unset is an error).
# Check a file with:  coapbridge --config conf/coapbridge.yaml check-config
"""


def example() -> str:
    lines = [EXAMPLE_HEAD]
    lines += _example_section(Config, "", 0)
    return "\n".join(lines) + "\n"


def _comment(text: str, indent: int) -> List[str]:
    pad = " " * indent + "# "
    return textwrap.wrap(text, width=92 - len(pad), initial_indent=pad,
                         subsequent_indent=pad, break_on_hyphens=False)


def _example_section(cls: Any, prefix: str, indent: int) -> List[str]:
    lines: List[str] = []
    pad = " " * indent
    for f in fields(cls):
        if is_section(f):
            lines.append("")
            lines += _comment(" ".join((f.default_factory.__doc__ or "").split()), indent)
            lines.append("%s%s:" % (pad, f.name))
            lines += _example_section(f.default_factory, prefix + f.name + ".", indent + 2)
            continue
        s = SETTINGS[prefix + f.name]
        values = _values(s.rule)
        note = "Variable %s%s%s." % (s.env, "" if len(s.names) == 1 else
                                     " (also %s)" % ", ".join(s.names[1:]),
                                     "; " + values if values else "")
        lines += _comment(s.rule.text + " " + note, indent)
        default = _doc_default(s).strip("`")
        lines.append("%s# %s: %s" % (pad, f.name, default))
    return lines


def known_variable(name: str) -> bool:
    return name in ENV_NAMES or name in PROCESS_VARIABLES

