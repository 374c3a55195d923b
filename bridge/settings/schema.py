"""The schema's own machinery: a setting is a dataclass field with its rule beside it.

``setting(default, "meaning", low=..., high=..., env=(...), ...)`` declares one field of a
section's frozen dataclass; the ``Rule`` in its metadata says what it means (the first
sentence is the one-line meaning of ``coapbridge config env``; the rest goes into
docs/configuration.md and conf/coapbridge.yaml), its range or choices, its other
environment names and whether it is a secret. ``walk(Config)`` lists every setting with
its dotted path; its environment name is derived from that path (``env_name``), so a new
field has a variable without anything else to write.

Pure: values in, problems (one line each) out.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Dict, List, Optional, Tuple

RULE = "coapbridge.rule"  # the metadata key of a field's Rule
ITEMS = "coapbridge.items"  # the metadata key of a list's or mapping's item dataclass
EXTRA = "coapbridge.extra"  # the metadata key of an item's field holding its other keys, raw


@dataclass(frozen=True)
class Rule:
    """What one setting means and which values it takes."""
    text: str  # its meaning: the first sentence is the one-line meaning
    low: Optional[float] = None  # the range of a number: low..high (inclusive)
    high: Optional[float] = None
    above: bool = False  # low itself excluded: more than low
    unit: str = ""  # "s", "bytes": said in the range's message and the docs
    why: str = ""  # why the range stops where it does, for the message
    choices: Tuple[str, ...] = ()
    # a choice written in any case, or as another of its usual names (spelling, choice):
    # read as that choice
    spellings: Tuple[Tuple[str, str], ...] = ()
    any_case: bool = False
    refused: Tuple[Tuple[str, str], ...] = ()  # (value, why): refused with a line of its own
    env: Tuple[str, ...] = ()  # other environment names (today's documented ones)
    deprecated: Tuple[str, ...] = ()  # old environment names: read, with a warning
    secret: str = ""  # "hidden": never printed; "token": its first four characters; "url":
    # the password in a URL hidden
    address: bool = False  # a bind address: an IP address ("" allowed when the default)
    port: bool = False  # a port number: said as one
    nullable: bool = False  # an item's key that may be null (as exported profiles have it)


def setting(default: Any, text: str, **rule: Any) -> Any:
    """A field holding one setting (``default`` immutable: a number, a string, a bool)."""
    return field(default=default, metadata={RULE: Rule(text, **rule)})


def section(cls: Any) -> Any:
    """A field holding a section (a dataclass whose docstring says what it is for)."""
    return field(default_factory=cls)


def mapping(item: Any, text: str, **rule: Any) -> Any:
    """A field holding a mapping of names to ``item`` dataclasses (one variable of YAML)."""
    return field(default_factory=dict, metadata={RULE: Rule(text, **rule), ITEMS: item})


def nested(item: Any, text: str) -> Any:
    """A field of an item dataclass holding another item (a device profile's
    ``clientSettings``): a mapping in the file, null or left out for its defaults."""
    return field(default_factory=item, metadata={RULE: Rule(text), ITEMS: item})


def extra(text: str) -> Any:
    """A field of an item dataclass holding every key of the item it does not declare, as
    given (a read-only mapping): another layer types them (a device profile's payload format
    keys, typed by the format at start)."""
    return field(default_factory=lambda: MappingProxyType({}),
                 metadata={RULE: Rule(text), EXTRA: True})


def listing(item: Any, text: str, **rule: Any) -> Any:
    """A field holding a list of ``item`` dataclasses (one variable of YAML or JSON)."""
    return field(default=(), metadata={RULE: Rule(text, **rule), ITEMS: item})


@dataclass(frozen=True)
class Setting:
    """One setting of the schema, found by ``walk``."""
    path: str  # "coap.bind_port"
    rule: Rule
    default: Any
    items: Any = None  # the item dataclass of a list or mapping

    @property
    def env(self) -> str:
        return env_name(self.path)

    @property
    def names(self) -> Tuple[str, ...]:
        """Every environment name, the derived one first, then its aliases."""
        return (self.env,) + tuple(name for name in self.rule.env if name != self.env)

    @property
    def kind(self) -> str:
        if self.items is not None:
            return "mapping" if isinstance(self.default, dict) else "list"
        return {bool: "boolean", int: "integer", float: "number"}.get(type(self.default),
                                                                     "string")

    @property
    def meaning(self) -> str:
        """The first sentence of the rule's text."""
        text = self.rule.text
        end = text.find(". ")
        return text if end < 0 else text[:end + 1]


def env_name(path: str) -> str:
    """The environment name of a setting: its dotted path upper-cased, dots as underscores
    (``limits.device_rate`` -> ``LIMITS_DEVICE_RATE``)."""
    return path.replace(".", "_").upper()


def is_section(f: Any) -> bool:
    return RULE not in f.metadata and f.default_factory is not MISSING and \
        is_dataclass(f.default_factory)


def walk(cls: Any, prefix: str = "") -> List[Setting]:
    """Every setting of dataclass ``cls`` and its sections, in declaration order (the items of
    lists and mappings are not settings of their own)."""
    found: List[Setting] = []
    for f in fields(cls):
        if is_section(f):
            found += walk(f.default_factory, prefix + f.name + ".")
            continue
        rule = f.metadata.get(RULE)
        if rule is None:
            raise TypeError("%s%s: a field without setting(...)" % (prefix, f.name))
        default = f.default if f.default is not MISSING else f.default_factory()
        found.append(Setting(prefix + f.name, rule, default, f.metadata.get(ITEMS)))
    return found


def item_rules(cls: Any) -> List[Tuple[str, Rule, Any]]:
    """(key, rule, default) of each field of an item dataclass (a device profile...)."""
    return [(f.name, f.metadata[RULE], f.default) for f in fields(cls)]


def number(value: float) -> str:
    """A number as a person writes it: 65536, 0.5, 1e+308."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and \
            abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def choices_text(choices: Tuple[str, ...]) -> str:
    """``PEM``, ``5 or 3.1.1``, ``one of debug, info, warn``."""
    if len(choices) <= 2:
        return " or ".join(choices)
    return "one of " + ", ".join(choices)


def choices_of(rule: Rule) -> str:
    """``one of debug, info, warn, error, critical (any case; warning = warn...)``."""
    notes = (["any case"] if rule.any_case else []) + ["%s = %s" % pair
                                                       for pair in rule.spellings]
    return choices_text(rule.choices) + (" (%s)" % "; ".join(notes) if notes else "")


def range_text(rule: Rule) -> str:
    """``1 to 65535``, ``more than 0 and at most 60 s``; empty without a range."""
    if rule.low is None or rule.high is None:
        return ""
    if rule.above:
        text = "more than %s and at most %s" % (number(rule.low), number(rule.high))
    else:
        text = "%s to %s" % (number(rule.low), number(rule.high))
    return text + (" " + rule.unit if rule.unit else "")


def canonical(rule: Rule, value: Any) -> Any:
    """``value`` as the choice it spells (``WARNING`` -> ``warn`` for log_level)."""
    if not isinstance(value, str) or not (rule.any_case or rule.spellings):
        return value
    text = value.strip().lower() if rule.any_case else value
    return dict(rule.spellings).get(text, text)


def check_value(path: str, rule: Rule, default: Any, value: Any) -> Optional[str]:
    """The problem with one setting's value on its own (range, choice, address), or None."""
    for refused, why in rule.refused:
        if value == refused:
            return "%s: %s" % (path, why)
    if rule.choices and value not in rule.choices and value != default:
        return "%s: must be %s, got %r" % (path, choices_of(rule), value)
    if rule.address and (value or default):
        return _address_problem(path, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or rule.low is None:
        return None
    if rule.port and not rule.low <= value <= rule.high:
        return "%s: port %s is out of range %s-%s" % (path, number(value), number(rule.low),
                                                      number(rule.high))
    low_ok = value > rule.low if rule.above else value >= rule.low
    if math.isfinite(value) and low_ok and value <= rule.high:
        return None
    why = " (%s)" % rule.why if rule.why else ""
    finite = "" if math.isfinite(value) else "a finite number, "
    return "%s: must be %s%s%s, got %s" % (path, finite, range_text(rule), why, number(value))


def _address_problem(path: str, value: str) -> Optional[str]:
    """A bind address must be an IP address of this host, written as one: names are not
    resolved (a name may stand for several addresses, or change while the bridge runs)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    hint = "an IP address such as 0.0.0.0 (every IPv4 address), :: (IPv6 and IPv4) or " \
           "127.0.0.1 (this host only)"
    if value.strip() != value:
        return "%s: %r has spaces around it: give %r" % (path, value, value.strip())
    if value.lower() == "localhost":
        return "%s: must be an IP address, not the name localhost: give 127.0.0.1 (or ::1)" \
            % path
    return "%s: %r is not an IP address (names are not resolved): give %s" % (path, value, hint)


class Problems:
    """The problems of one load, one line each, and which settings have one (a check that
    reads a setting with a problem of its own says nothing more about it)."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.bad: Dict[str, str] = {}

    def add(self, path: str, text: str) -> None:
        """``text`` is the whole line (it starts with the path, or names it)."""
        self.lines.append(text)
        self.bad.setdefault(path, text)

    def fine(self, *paths: str) -> bool:
        return not any(path in self.bad for path in paths)

    def extend(self, lines: List[str]) -> None:
        self.lines.extend(lines)
