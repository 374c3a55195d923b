"""The payload formats' registry: each format declared once, in its own module.

A format module ends with one ``FORMAT = PayloadFormatEntry(...)``: the names ThingsBoard's
device profile gives it (``coapDeviceType`` and ``transportPayloadType``), the profile keys
it reads with their checks (pure: a profile in, its problems out), the factory that builds
the format object of a device type from its profile, and its start-up check, the I/O
(schema files read, ``protoc`` run), named by a ``"module:function"`` string because the
core may not import the edge that does it: ``bridge.startup_checks`` resolves and runs it
once, before any socket opens. ``INSTALLED_MODULES`` names the installed formats' modules,
one line, and ``INSTALLED`` is their registry. The settings type a profile's keys and know no format (``bridge.settings`` may not
import the core): the registry checks the names and each format its keys, at start.

The glue builds the device types' formats once (``formats_of``); the core then asks
``Formats`` per device type, as before, so the uplink path does no registry lookup.

No library does this (a dozen lines of table): an entry point group (``importlib.metadata``)
would be the way for formats installed by other distributions, which coapbridge has not.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ...settings.loader import typed_keys
from ...settings.profiles import COMMON_KEYS
from . import DEFAULT_DEVICE_TYPE, BuildContext, FormatKeys, PayloadFormat, PayloadFormatEntry

# the installed formats: their modules here (each ends with its FORMAT), JSON first
INSTALLED_MODULES = ("json", "protobuf", "efento")


@dataclass(frozen=True)
class FormatRegistry:
    """The installed formats (immutable: ``with_format`` gives a new registry)."""
    entries: Tuple[PayloadFormatEntry, ...]
    _by_names: Dict[Tuple[str, Optional[str]], PayloadFormatEntry] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_names: Dict[Tuple[str, Optional[str]], PayloadFormatEntry] = {}
        for entry in self.entries:
            if entry.startup and entry.startup.count(":") != 1:
                raise ValueError("payload format %s: startup %r is not \"module:function\""
                                 % (entry.name, entry.startup))
            _check_settings(entry)
            names = (entry.device_type, entry.payload_type)
            if names in by_names:
                raise ValueError("payload formats %s and %s both take coapDeviceType %s, "
                                 "transportPayloadType %s" % (by_names[names].name,
                                                              entry.name, *names))
            by_names[names] = entry
        object.__setattr__(self, "_by_names", by_names)

    def with_format(self, entry: PayloadFormatEntry) -> "FormatRegistry":
        return FormatRegistry(self.entries + (entry,))

    @property
    def device_types(self) -> Tuple[str, ...]:
        return _unique([DEFAULT_DEVICE_TYPE] + [e.device_type for e in self.entries])

    @property
    def payload_types(self) -> Tuple[str, ...]:
        return _unique(e.payload_type for e in self.entries if e.payload_type is not None)

    @property
    def keys(self) -> Tuple[str, ...]:
        """Every text key of a payload configuration some format reads, then its flags."""
        return _unique(key for e in self.entries for key in e.keys + e.flags)

    @property
    def flags(self) -> Tuple[str, ...]:
        return _unique(key for e in self.entries for key in e.flags)

    def entry_for(self, profile: Any) -> Optional[PayloadFormatEntry]:
        """The format of ``profile`` (None: its names are no installed format's)."""
        entry = self._by_names.get((profile.coapDeviceType, None))
        if entry is not None:
            return entry
        if profile.coapDeviceType != DEFAULT_DEVICE_TYPE:
            return None
        return self._by_names.get((DEFAULT_DEVICE_TYPE, profile.transportPayloadType))

    def name_of(self, profile: Any) -> Optional[str]:
        """The name of ``profile``'s format (``json``, ``protobuf``...), None: none's."""
        entry = self.entry_for(profile)
        return None if entry is None else entry.name

    def check(self, profile: Any, where: str) -> Tuple[Optional[PayloadFormatEntry],
                                                       List[str]]:
        """The format of ``profile`` and its problems (``checked``'s, without the profile)."""
        entry, _, problems = self.checked(profile, where)
        return entry, problems

    def checked(self, profile: Any, where: str) -> Tuple[Optional[PayloadFormatEntry], Any,
                                                         List[str]]:
        """The format of ``profile``, the profile with its format's keys typed, and its
        problems: names no format takes, then its keys (each bad value, each key its format
        does not read), then the format's own checks (``where``:
        ``device_profiles.<type>.``)."""
        if profile.coapDeviceType not in self.device_types:
            return None, profile, ["%scoapDeviceType: must be %s, got %r" % (
                where, _either(self.device_types), profile.coapDeviceType)]
        entry = self.entry_for(profile)
        if entry is None:
            return None, profile, ["%stransportPayloadType: must be %s, got %r" % (
                where, _either(self.payload_types), profile.transportPayloadType)]
        problems = self._unknown_keys(entry, profile.format_keys, where)
        keys = typed_keys(entry.settings, profile.format_keys, where, problems)
        profile = replace(profile, format_keys=keys)
        return entry, profile, problems + entry.check(profile, where)

    @property
    def format_keys(self) -> Tuple[str, ...]:
        """Every key some format declares (its settings)."""
        return _unique(name for e in self.entries for name in _names_of(e.settings))

    def _owners(self, key: str) -> str:
        return _either(tuple(e.kind for e in self.entries if key in _names_of(e.settings)))

    def _unknown_keys(self, entry: PayloadFormatEntry, raw: Mapping[str, Any],
                      where: str) -> List[str]:
        """A line for each key of ``raw`` that ``entry``'s format does not read: whose
        format's it is, or the nearest key it might have meant."""
        own = [f.name for f in fields(entry.settings)]
        known = sorted(COMMON_KEYS + tuple(own))
        lines = []
        for key in raw:
            if key in own:
                continue
            if key in self.format_keys:
                lines.append("%s%s: a key of %s profiles, not of %s ones" % (
                    where, key, self._owners(key), entry.kind))
                continue
            others = [name for name in self.format_keys if name not in known]
            near = difflib.get_close_matches(key, known + others, n=1, cutoff=0.6)
            hint = ""
            if near:
                whose = "" if near[0] in known else " (a key of %s profiles)" % self._owners(
                    near[0])
                hint = "did you mean %s%s? " % (near[0], whose)
            lines.append("%s%s: unknown key (%sknown: %s)" % (where, key, hint,
                                                              ", ".join(known)))
        return lines

    def build(self, profiles: Mapping[str, Any], context: BuildContext
              ) -> Dict[str, PayloadFormat]:
        """Device type -> its format object, for the types of ``profiles`` (checked: each
        has its format)."""
        built: Dict[str, PayloadFormat] = {}
        for device_type, profile in profiles.items():
            entry = self.entry_for(profile)
            if entry is None:
                raise ValueError("device_profiles.%s: no installed payload format"
                                 % device_type)
            if not isinstance(profile.format_keys, entry.settings):  # not checked yet
                entry, profile, problems = self.checked(profile, "device_profiles.%s."
                                                        % device_type)
                if problems:
                    raise ValueError("; ".join(problems))
            built[device_type] = entry.factory(profile, context)
        return built


def formats_of(registry: FormatRegistry, profiles: Mapping[str, Any],
               context: BuildContext) -> Callable[[str], PayloadFormat]:
    """Device type -> its payload format (the JSON format for a type without a profile),
    every profile's format built once here."""
    built = registry.build(profiles, context)
    json = context.json
    return lambda device_type: built.get(device_type, json)


def _names_of(settings: type) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(settings))


def _check_settings(entry: PayloadFormatEntry) -> None:
    """An entry's keys are a FormatKeys dataclass of settings, with none of a profile's
    common keys or a mapping's methods, and holding its keys and flags."""
    settings = entry.settings
    if not (is_dataclass(settings) and issubclass(settings, FormatKeys)):
        raise ValueError("payload format %s: settings must be a FormatKeys dataclass"
                         % entry.name)
    types = {f.name: type(f.default) for f in fields(settings)}
    taken = set(types) & (set(COMMON_KEYS) | set(dir(Mapping)))
    if taken:
        raise ValueError("payload format %s: %s taken (a profile's own key, or a mapping's)"
                         % (entry.name, ", ".join(sorted(taken))))
    for names, kind in ((entry.keys, str), (entry.flags, bool)):
        for name in names:
            if types.get(name) is not kind:
                raise ValueError("payload format %s: %s is no %s key of its settings"
                                 % (entry.name, name, kind.__name__))


def _unique(names: Iterable[str]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _either(names: Tuple[str, ...]) -> str:
    return " or ".join(names) if len(names) <= 2 else "one of " + ", ".join(names)


INSTALLED = FormatRegistry(tuple(importlib.import_module("%s.%s" % (__package__, name)).FORMAT
                                 for name in INSTALLED_MODULES))
