"""A decoded uplink message as the JSON ThingsBoard's printer writes it (as Python values).

ThingsBoard prints with protobuf-java's ``JsonFormat.printer().includingDefaultValueFields()``:
lowerCamelCase JSON names, 64-bit integers as strings, enums by name (an unknown number as
the number), bytes as base64, fields declared ``optional`` (and message fields, and oneof
members) only when set, the other fields always (their defaults when unset), nested
messages as objects. Python's ``json_format.MessageToDict(message,
always_print_fields_with_no_presence=True)`` gives the same document; this printer gives
that document too, with the key order ``MessageToDict`` uses, at a fraction of its cost (it
is the protobuf uplink's main cost): the rules of each message type are worked out once,
into a table per message type, where ``MessageToDict`` asks every field descriptor for
them on every message. ThingsBoard's schema rules leave out what would need more (maps,
extensions, imports, hence well-known types); a schema that defines a message of the
``google.protobuf`` package is printed by ``MessageToDict`` itself.

Numbers keep the platform's typing: Java prints a double outside [1e-3, 1e7) as ``1.0E7``,
which the platform stores as LONG when it is integral, where Python would write
``10000000.0`` (a DOUBLE); such a value is printed as the integer, typed the same way.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from google.protobuf import descriptor, json_format
from google.protobuf.internal import type_checkers

FD = descriptor.FieldDescriptor
_JAVA_PLAIN_MAX = 1e7  # Java's Double.toString uses E notation from here on
_LONG_LIMIT = float(2 ** 63)
_INT64 = (FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64)
_NEW_LIST = object()  # a repeated field's default: a fresh [] each time

Convert = Optional[Callable[[Any], Any]]  # None: the value as it is


def java_double(value: float) -> Any:
    """A double as ThingsBoard types it: NaN and infinities as text (as printed), an
    integral value Java prints in E notation as an integer."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if value.is_integer() and _JAVA_PLAIN_MAX <= abs(value) < _LONG_LIMIT:
        return int(value)
    return value


def java_float(value: float) -> Any:
    if value != value or math.isinf(value):
        return java_double(value)
    return java_double(type_checkers.ToShortestFloat(value))


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6.31 (``label`` goes in 7)
    return flag if flag is not None else field.label == FD.LABEL_REPEATED


class _Table:
    """How to print one message type: per field, its JSON name, whether it is repeated and
    how to convert its values; the defaults of the fields always printed."""

    def __init__(self) -> None:
        self.fields: Dict[Any, Tuple[str, bool, Convert]] = {}  # by field descriptor
        self.defaults: List[Tuple[str, Any]] = []


class Printer:
    """Prints messages; the table of a message type is built on its first message. Tables
    are keyed by the message type's descriptor: two schemas may both define
    ``telemetry.SensorDataReading``, each in its own pool."""

    def __init__(self) -> None:
        self.tables: Dict[Any, _Table] = {}
        self.reference: set = set()  # types MessageToDict prints (see _needs_reference_printer)

    def to_json(self, message: Any) -> Any:
        message_type = message.DESCRIPTOR
        table = self.tables.get(message_type)
        if table is None:
            if message_type in self.reference or _needs_reference_printer(message_type):
                self.reference.add(message_type)
                return reference_to_json(message)
            table = self._table(message_type)
        return self._print(message, table)

    def _print(self, message: Any, table: _Table) -> Dict[str, Any]:
        js: Dict[str, Any] = {}
        fields = table.fields
        for field, value in message.ListFields():
            name, repeated, convert = fields[field]
            if convert is None:
                js[name] = list(value) if repeated else value
            elif repeated:
                js[name] = [convert(item) for item in value]
            else:
                js[name] = convert(value)
        for name, default in table.defaults:
            if name not in js:
                js[name] = [] if default is _NEW_LIST else default
        return js

    def _table(self, message_type: Any) -> _Table:
        table = self.tables[message_type] = _Table()
        for field in message_type.fields:
            convert = self._converter(field)
            repeated = _repeated(field)
            table.fields[field] = (field.json_name, repeated, convert)
            if field.has_presence:
                continue  # printed only when set
            if repeated:
                table.defaults.append((field.json_name, _NEW_LIST))
            else:
                default = field.default_value
                table.defaults.append((field.json_name,
                                       default if convert is None else convert(default)))
        return table

    def _converter(self, field: Any) -> Convert:
        kind = field.cpp_type
        if kind == FD.CPPTYPE_MESSAGE:
            sub_type = field.message_type

            def message(value: Any) -> Any:
                table = self.tables.get(sub_type) or self._table(sub_type)
                return self._print(value, table)
            return message
        if kind == FD.CPPTYPE_ENUM:
            names = {number: value.name
                     for number, value in field.enum_type.values_by_number.items()}
            return lambda number: names.get(number, number)
        if field.type == FD.TYPE_BYTES:
            return _bytes
        if kind in _INT64:
            return str
        if kind == FD.CPPTYPE_DOUBLE:
            return java_double
        if kind == FD.CPPTYPE_FLOAT:
            return java_float
        return None  # strings, bools, 32-bit integers: as they are


_PRINTER = Printer()


def to_json(message: Any) -> Any:
    """``message`` as ThingsBoard's JSON printer writes it (as Python values)."""
    return _PRINTER.to_json(message)


def _needs_reference_printer(message_type: Any, seen: Optional[set] = None) -> bool:
    """A message type (or one it contains) that ``MessageToDict`` prints by special rules
    (a well-known type: the ``google.protobuf`` package)."""
    seen = set() if seen is None else seen
    if message_type.full_name in seen:
        return False
    seen.add(message_type.full_name)
    if message_type.full_name.startswith("google.protobuf."):
        return True
    return any(_needs_reference_printer(field.message_type, seen)
               for field in message_type.fields if field.cpp_type == FD.CPPTYPE_MESSAGE)


def json_depth(message_type: Any) -> Optional[int]:
    """The deepest nesting the JSON of a ``message_type`` can have, counted as
    ``jsondepth.depth`` counts (1 for an object of scalars; a message field adds its
    message's depth, a repeated field one more level for its array); None when it has no
    bound (a message type that contains itself, or a well-known type)."""
    return _depth(message_type, set())


def _depth(message_type: Any, open_types: set) -> Optional[int]:
    if message_type.full_name in open_types or message_type.full_name.startswith(
            "google.protobuf."):
        return None
    open_types.add(message_type.full_name)
    deepest = 1
    for field in message_type.fields:
        below = 0
        if field.cpp_type == FD.CPPTYPE_MESSAGE:
            inner = _depth(field.message_type, open_types)
            if inner is None:
                return None
            below = inner
        deepest = max(deepest, 1 + below + (1 if _repeated(field) else 0))
    open_types.discard(message_type.full_name)
    return deepest


def _java_typed(value: Any) -> Any:
    if type(value) is float:
        return java_double(value)
    if type(value) is dict:
        return {key: _java_typed(item) for key, item in value.items()}
    if type(value) is list:
        return [_java_typed(item) for item in value]
    return value


def reference_to_json(message: Any) -> Any:
    """protobuf's own printer, with the platform's number typing."""
    return _java_typed(json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False, use_integers_for_enums=False))
