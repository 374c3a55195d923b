"""Parse device payloads (JSON profile) into canonical values.

Rules follow ThingsBoard's JSON converter (spec thingsboard-coap.md §3) with
RFC-correct answers where ThingsBoard is silent or answers 5.00:

* telemetry: an object, an array of objects, ``{"ts": ms, "values": {...}}``
  or arrays mixing both; values are kept as sent (string, boolean, integer,
  float, nested JSON); ``null`` values are dropped, as ThingsBoard drops them.
  Entries without ``ts`` get the receipt time, so data that waits keeps its
  true time.
* attributes: a flat object.
* claim: optional ``{"secretKey": str, "durationMs": int}``.

Strict JSON (RFC 8259): ThingsBoard's lenient Gson also takes unquoted keys,
single quotes, NaN and Infinity; we answer those with 4.00. So do documents
nested deeper than ``max_depth`` (``limits.json_max_depth``, see jsondepth.py).

Numbers the platform reads as a Java ``long`` (a ``ts``, ``durationMs``) must fit
one: ``ts`` from 0 to 2**63-1, ``durationMs`` from -2**63 to 2**63-1 (ThingsBoard
takes 0 or less as its default duration); otherwise 4.00, as the platform would
fail on the gateway message.

Duplicate keys: the last occurrence wins, as in ``json`` (and Gson, which the
platform parses with), in every document. An upload forwarded as the device
wrote it (``plain_values``) therefore must not hold any.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import jsondepth
from .codes import BadRequest

Values = Dict[str, Any]

MAX_DEPTH = 32  # the core's default for limits.json_max_depth (config.py has the setting)
MAX_LONG = 2 ** 63 - 1  # Java's Long.MAX_VALUE
MIN_LONG = -2 ** 63


@dataclass(frozen=True)
class TelemetryEntry:
    ts: int
    values: Values


@dataclass(frozen=True)
class Claim:
    secret_key: str = ""
    duration_ms: int = 0


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not valid JSON" % name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number %s is out of range" % text[:24])
    return value


# The strict decoder: NaN, Infinity and numbers out of range are errors (they are not
# JSON, and the platform cannot take them); every error below is raised in its words.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_SCAN = _DECODER.scan_once


def _finite(value: Any) -> bool:
    """No float in ``value`` is NaN or infinite (what ``json.loads`` makes of NaN,
    Infinity and numbers out of range). ``x - x`` is 0.0 for every finite float only."""
    if type(value) is dict:
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return type(value) is not float or value - value == 0.0
    stack: List[Any] = []
    while True:
        for item in items:
            kind = type(item)
            if kind is float:
                if item - item != 0.0:
                    return False
            elif kind is dict:
                stack.append(item.values())
            elif kind is list:
                stack.append(item)
        if not stack:
            return True
        items = stack.pop()


_PYPY = sys.implementation.name == "pypy"
if _PYPY:
    def _decode(text: str) -> Any:
        """``_DECODER.decode(text)``. On PyPy ``json.loads`` with its default arguments is
        the decoder written in RPython; one with hooks runs the pure-Python scanner, about
        ten times slower. So: ``json.loads``, then a look for the floats the strict
        decoder refuses; an error, or such a float, and the strict decoder raises."""
        try:
            value = json.loads(text)
        except ValueError:
            return _DECODER.decode(text)
        if _finite(value):
            return value
        return _DECODER.decode(text)
else:
    def _decode(text: str) -> Any:
        """``_DECODER.decode(text)``; a text that is one object with nothing around it (a
        device's upload, nearly always) is scanned without the decoder's two whitespace
        matches (CPython's C scanner calls ``_finite_float`` for each float)."""
        if text[:1] == "{" and text[-1:] == "}":
            try:
                value, end = _SCAN(text, 0)
            except (ValueError, StopIteration):
                return _DECODER.decode(text)
            if end == len(text):
                return value
        return _DECODER.decode(text)


# The decoder of ``plain_object``: no hook per float (their check is its loop's), the
# constants still refused (so a NaN or Infinity falls back to the strict decoder's words)
_PLAIN_SCAN = json.JSONDecoder(parse_constant=_reject_constant).scan_once


def plain_object(payload: bytes, max_depth: int) -> Optional[Values]:
    """The common upload's short way: ``payload`` decoded as ``parse_json`` decodes it
    when it is one object with values ``plain_values`` takes, else None (and
    ``parse_json`` reads it, and words its errors). One object with nothing around it,
    fewer brackets than ``max_depth``, no NaN or infinite number at any depth (checked
    here on the values, not by a hook per float), no null at its top, not in the
    ``{"ts", "values"}`` form. A short way: about half the Python calls of
    ``parse_json`` and ``plain_values`` (docs/performance.md)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text[:1] != "{" or text[-1:] != "}" or text.count("{") + text.count("[") > max_depth:
        return None
    try:
        if _PYPY:  # its C-speed decoder is json.loads without hooks (see ``_decode``)
            doc, end = json.loads(text), len(text)
        else:
            doc, end = _PLAIN_SCAN(text, 0)
    except (ValueError, StopIteration):
        return None
    if end != len(text) or type(doc) is not dict or not doc or ("ts" in doc and "values" in doc):
        return None
    for value in doc.values():
        kind = type(value)
        if value is None or (kind is float and value - value != 0.0) \
                or ((kind is dict or kind is list) and not _finite(value)):
            return None
    return doc


class NotJson(BadRequest):
    """4.00: the payload is not UTF-8 JSON text at all (provisioning then reads it as
    protobuf, as ThingsBoard does on a JSON syntax error)."""


def parse_json(payload: bytes, what: str, max_depth: int) -> Any:
    """Decode a UTF-8 JSON document nested at most ``max_depth`` levels, or raise 4.00
    naming what was wrong."""
    if not payload:
        raise BadRequest("%s: empty payload" % what)
    try:
        return jsondepth.decode(payload.decode("utf-8"), max_depth, _decode)
    except UnicodeDecodeError:
        raise NotJson("%s: payload is not UTF-8" % what)
    except jsondepth.TooDeep:
        raise BadRequest("%s: JSON nested deeper than %d levels" % (what, max_depth))
    except ValueError as exc:
        raise NotJson("%s: invalid JSON (%s)" % (what, str(exc)[:80]))


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clean_values(obj: Dict[str, Any]) -> Values:
    return {key: value for key, value in obj.items() if value is not None}


def _telemetry_entry(obj: Any, now_ms: int) -> TelemetryEntry:
    if not isinstance(obj, dict):
        raise BadRequest("telemetry: each element must be a JSON object")
    if "ts" in obj and "values" in obj:
        ts, values = obj["ts"], obj["values"]
        if not _is_integer(ts) or not 0 <= ts <= MAX_LONG:
            raise BadRequest("telemetry: ts must be an integer from 0 to 2**63-1 "
                             "(ms since epoch)")
        if not isinstance(values, dict):
            raise BadRequest("telemetry: values must be a JSON object")
        return TelemetryEntry(ts, _clean_values(values))
    return TelemetryEntry(now_ms, _clean_values(obj))


def parse_telemetry(payload: bytes, now_ms: int,
                    max_depth: int = MAX_DEPTH) -> List[TelemetryEntry]:
    return telemetry_entries(parse_json(payload, "telemetry", max_depth), now_ms)


def telemetry_entries(doc: Any, now_ms: int) -> List[TelemetryEntry]:
    """The entries of a decoded telemetry upload."""
    items = doc if isinstance(doc, list) else [doc]
    if not isinstance(doc, (list, dict)):
        raise BadRequest("telemetry: expected a JSON object or an array of objects")
    entries = [_telemetry_entry(item, now_ms) for item in items]
    entries = [entry for entry in entries if entry.values]
    if not entries:
        raise BadRequest("telemetry: no values")
    return entries


def plain_values(doc: Any) -> bool:
    """``doc`` is one non-empty object of values with no null to drop and not in the
    ``{"ts", "values"}`` form: the gateway message can carry it as its values object
    (see ``values_text``)."""
    return type(doc) is dict and bool(doc) and not ("ts" in doc and "values" in doc) \
        and None not in doc.values()


def values_text(doc: Values, payload: bytes) -> bytes:
    """The JSON text of the values ``doc`` (``plain_values``) decoded from ``payload``:
    ``payload`` itself when it cannot repeat a key, else ``doc`` encoded again (in which
    the last occurrence of a key won).

    Outside strings a JSON text has one colon per object member, so ``payload`` has at
    least as many colons as members, and as many members as ``doc`` has keys unless a
    key was repeated: as many colons as keys of ``doc`` proves there was none. The
    common flat upload costs one ``bytes.count``; one with nested objects or a colon in
    a string (a time of day, a URL) is encoded again, about 2 µs."""
    if payload.count(b":") == len(doc):
        return payload
    return dumps(doc)


def parse_attributes(payload: bytes, max_depth: int = MAX_DEPTH) -> Values:
    return attribute_values(parse_json(payload, "attributes", max_depth))


def attribute_values(doc: Any) -> Values:
    """The values of a decoded attributes upload."""
    if not isinstance(doc, dict):
        raise BadRequest("attributes: expected a JSON object")
    values = _clean_values(doc)
    if not values:
        raise BadRequest("attributes: no values")
    return values


def parse_claim(payload: bytes, max_depth: int = MAX_DEPTH) -> Claim:
    if not payload.strip():
        return Claim()
    doc = parse_json(payload, "claim", max_depth)
    if not isinstance(doc, dict):
        raise BadRequest("claim: expected a JSON object")
    secret = doc.get("secretKey", "")
    duration = doc.get("durationMs", 0)
    if secret is None:
        secret = ""
    if duration is None:
        duration = 0
    if not isinstance(secret, str):
        raise BadRequest("claim: secretKey must be a string")
    if not _is_integer(duration) or not MIN_LONG <= duration <= MAX_LONG:
        raise BadRequest("claim: durationMs must be an integer from -2**63 to 2**63-1")
    return Claim(secret, duration)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
json_string = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, as the gateway topics carry it."""
    return _ENCODER.encode(value).encode("utf-8")


def split_query(items: Tuple[str, ...]) -> Dict[str, str]:
    """Uri-Query items as a dict; the last occurrence of a name wins."""
    result: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            result[name] = value
    return result
