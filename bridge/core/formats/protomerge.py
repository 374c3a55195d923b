"""The platform's JSON merged into a message as ThingsBoard merges a server-side RPC.

ThingsBoard builds ``{"method", "requestId", "params"}`` from the platform's RPC and merges
it into a fresh message of the profile's RPC request schema with protobuf-java's JSON
parser, unknown fields ignored. The merge itself is the ``protobuf`` package's
``json_format.ParseDict`` (``ignore_unknown_fields``); this module only makes it accept what
Java's parser accepts and Python's refuses, walking the document along the message's
descriptor:

- any JSON primitive read into a string field, as its text (``42`` -> ``"42"``,
  ``true`` -> ``"true"``);
- the strings ``"true"`` and ``"false"`` read into a bool field.

What both refuse still fails (an object into the default schema's ``string params``), and
what Java refuses and ``ParseDict`` would take is refused here: anything but an object for a
message field (``ParseDict`` reads a string's characters as field names, and with unknown
fields ignored, sets an empty message), anything but an array for a repeated one.
Gson keeps a number's text; the platform's JSON has been parsed here, so a double reaches a
string field as Python writes it (the platform's ``1e3`` arrives as ``"1000.0"``, where
ThingsBoard would pass ``"1e3"``).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Dict

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

_STRING, _BOOL, _MESSAGE = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL,
                            FieldDescriptor.TYPE_MESSAGE)


class MergeError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _fields(descriptor: Any) -> Dict[str, Any]:
    """A message's fields by JSON name and by proto name (Java's parser takes both)."""
    fields = {field.name: field for field in descriptor.fields}
    fields.update((field.json_name, field) for field in descriptor.fields)
    return fields


def _repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; ``label`` goes in 7
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _value(value: Any, field: Any) -> Any:
    kind = field.type
    if kind == _STRING:
        if value is True or value is False:
            return "true" if value else "false"
        if type(value) is int or type(value) is float:
            return json.dumps(value)
    elif kind == _BOOL and (value == "true" or value == "false"):
        return value == "true"
    elif kind == _MESSAGE:
        if type(value) is not dict:  # ParseDict would read a string's characters as keys
            raise MergeError("%s: expected an object, got %s"
                             % (field.full_name, json.dumps(value)[:40]))
        return java_readable(value, field.message_type)
    return value


def java_readable(doc: Dict[str, Any], descriptor: Any) -> Dict[str, Any]:
    """``doc`` with what Java's parser would read into ``descriptor``'s fields rewritten so
    that ``ParseDict`` reads it the same way (other keys left as they are); ``MergeError``
    for what Java refuses and ``ParseDict`` would not."""
    fields = _fields(descriptor)
    out: Dict[str, Any] = {}
    for key, value in doc.items():
        field = fields.get(key)
        if field is None or value is None:
            out[key] = value
        elif _repeated(field):
            if type(value) is not list:
                raise MergeError("%s: expected an array" % field.full_name)
            out[key] = [_value(item, field) for item in value]
        else:
            out[key] = _value(value, field)
    return out


def merge(doc: Dict[str, Any], message: Any) -> Any:
    """``message`` with ``doc`` merged in (unknown keys ignored); ``MergeError`` says why a
    value does not fit."""
    try:
        json_format.ParseDict(java_readable(doc, message.DESCRIPTOR), message,
                              ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise MergeError(str(exc)) from exc
    return message
