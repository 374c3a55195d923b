"""Payload formats: how a device's CoAP payloads read and how the bridge writes to it.

The core never parses or encodes a device payload itself: it asks the device's
``PayloadFormat``, chosen by device type through the function ``GatewayCore`` is given: JSON
(``formats.json``) unless the type's device profile says PROTOBUF (``formats.protobuf``,
with the profile's schemas and ThingsBoard's fixed messages, ``formats.fixed``).

What goes to the platform is always the gateway API's JSON (``gateway.py``): a format turns
a device's upload into that message, and the platform's documents into the device's bytes,
one method per kind of downlink (each format writes each kind its own way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

from ..payloads import Values

Message = Tuple[str, bytes]  # a gateway topic and its payload


class CannotEncode(ValueError):
    """A platform document the device's format cannot carry (an RPC whose params do not fit
    the profile's RPC request schema): the reason, for the platform and the log."""


class PayloadFormat(Protocol):
    name: str
    content_format: int  # the CoAP Content-Format of every downlink this format writes

    # == uplinks: a device's payload -> the gateway API's JSON ==============

    def telemetry(self, device: str, payload: bytes, now: float) -> Message:
        """A telemetry upload of ``device`` as its gateway message (4.00 if unreadable)."""

    def attributes(self, device: str, payload: bytes) -> Tuple[str, bytes, Values]:
        """A client-attributes upload: its gateway message, and the values (their names
        are learnt for reads of every attribute)."""

    def claim(self, device: str, payload: bytes) -> Message:
        """A claiming request (secretKey, durationMs) as its gateway message."""

    def rpc_reply(self, device: str, rpc_id: int, payload: bytes) -> Message:
        """The device's reply to server-side RPC ``rpc_id`` as its gateway message."""

    def rpc_call(self, payload: bytes) -> Tuple[str, Any]:
        """A client-side RPC from the device: its method (not empty) and params."""

    # == downlinks: the platform's values -> the device's bytes ==============

    def attribute_update(self, data: Dict[str, Any], now: float) -> bytes:
        """A notification to an observer of /attributes: shared attributes changed (``data``
        maps names to values; its ``deleted`` lists removed names), or, first, all of them."""

    def attributes_response(self, client: Dict[str, Any], shared: Dict[str, Any],
                            now: float) -> bytes:
        """The answer to an attributes read (not both empty: that is 4.04)."""

    def server_rpc(self, rpc_id: int, method: str, params: Any) -> bytes:
        """A server-side RPC notification to an observer of /rpc; raises ``CannotEncode``
        when the params do not fit."""

    def rpc_result(self, payload: bytes) -> bytes:
        """The platform's answer (gateway API JSON) to a client-side RPC, for the device."""


FormatOf = Callable[[str], PayloadFormat]  # device type -> the format its devices speak

# == a format's declaration (``registry`` says how they are used) ==========

DEFAULT_DEVICE_TYPE = "DEFAULT"  # ThingsBoard's coapDeviceType of the /api/v1 device API
DEFAULT_PAYLOAD_TYPE = "JSON"  # transportPayloadType when left out (the settings' default)


@dataclass(frozen=True)
class BuildContext:
    """What a factory may use: ``json`` (the JSON format, ``limits.json_max_depth``: the
    default and a fallback) and ``compiler``, the edge's schema compiler
    (``bridge.edge.protoc``: ``message_class``, ``fixed_messages``, ``efento_messages``),
    handed in by the glue so that formats stay free of I/O."""
    json: PayloadFormat
    compiler: Any = None


class FormatKeys(Mapping):
    """The base of a format's keys: a frozen dataclass of ``setting(...)`` fields
    (``bridge.settings.schema``), declared in the format's module and named by its entry
    (``settings``). The start-up checks type a profile's ``format_keys`` as it; they then
    read as a mapping too, the field's type."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoKeys(FormatKeys):
    """The keys of a format that has none of its own (JSON, EFENTO)."""


Check = Callable[[Any, str], List[str]]  # (profile, "device_profiles.<type>.") -> problems
Factory = Callable[[Any, BuildContext], PayloadFormat]  # (profile, context) -> format


def no_problems(profile: Any, where: str) -> List[str]:
    return []


@dataclass(frozen=True)
class PayloadFormatEntry:
    """One payload format as the registry knows it (see the module)."""
    name: str  # its PayloadFormat.name
    factory: Factory
    payload_type: Optional[str] = None  # transportPayloadType; None: the device type's own
    device_type: str = DEFAULT_DEVICE_TYPE  # coapDeviceType
    keys: Tuple[str, ...] = ()  # its text keys an exported profile gives
    flags: Tuple[str, ...] = ()  # its true-or-false keys (an exported profile's too)
    check: Check = no_problems  # (its keys typed by then: ``profile.format_keys``)
    startup: str = ""  # "module:function": (profile, where, problems) -> profile, with I/O
    settings: type = NoKeys  # its keys: a FormatKeys dataclass (keys and flags among them)

    @property
    def kind(self) -> str:
        """The name a profile gives it: its transportPayloadType, or its coapDeviceType."""
        return self.payload_type or self.device_type


class Formats:
    """The format of each device type (asked once per type), and of a device known only by
    name (``type_of`` says its type when the core knows the device; else ``default``)."""

    def __init__(self, format_of: FormatOf, default: PayloadFormat,
                 type_of: Callable[[str], Optional[str]] = lambda name: None):
        self.format_of = format_of
        self.default = default
        self.type_of = type_of
        self.by_type: Dict[str, PayloadFormat] = {}

    def of(self, device_type: str) -> PayloadFormat:
        fmt = self.by_type.get(device_type)
        if fmt is None:
            fmt = self.by_type[device_type] = self.format_of(device_type)
        return fmt

    def of_name(self, name: str) -> PayloadFormat:
        device_type = self.type_of(name)
        return self.default if device_type is None else self.of(device_type)
