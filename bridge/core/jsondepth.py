"""A bound on the nesting depth of JSON documents, from devices and from the platform.

Python's ``json`` decoder recurses once per level and raises ``RecursionError``
near 1,000 levels; everything that later walks a decoded document (encoding it
again, comparing it) recurses too. ThingsBoard's JSON values are configuration
objects, not deep trees, so documents deeper than a configured bound are
refused before anything else touches them.

``decode(text, max_depth)`` is ``json``'s decoder plus that check. The check is
cheap where it cannot matter: a document with fewer brackets than the bound
cannot be deeper than it, and that count is two ``bytes.count`` calls; only
other documents are measured, without recursion.
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Union


class TooDeep(ValueError):
    """A JSON document nested deeper than the bound."""

    def __init__(self, max_depth: int):
        super().__init__("nested deeper than %d levels" % max_depth)
        self.max_depth = max_depth


def might_exceed(text: Union[str, bytes], max_depth: int) -> bool:
    """False when ``text`` has too few brackets to nest deeper than ``max_depth``."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > max_depth
    return text.count("[") + text.count("{") > max_depth


def depth(value: Any) -> int:
    """The nesting depth of a decoded document: 0 for a scalar, 1 for ``{}`` or ``[]``."""
    deepest = 0
    stack: List[Any] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, (dict, list)))
    return deepest


def check(value: Any, max_depth: int) -> Any:
    """``value`` itself, or ``TooDeep`` when it nests deeper than ``max_depth``."""
    if depth(value) > max_depth:
        raise TooDeep(max_depth)
    return value


def decode(text: Union[str, bytes], max_depth: int,
           decoder: Callable[[Any], Any] = json.loads) -> Any:
    """``decoder(text)``, refusing documents nested deeper than ``max_depth`` with ``TooDeep``.

    ``decoder`` takes what ``text`` is (``json.loads`` takes both; a
    ``JSONDecoder.decode`` wants ``str``). Other decoding errors pass through
    as the decoder raises them (``ValueError``, ``UnicodeDecodeError``).
    """
    if not might_exceed(text, max_depth):
        return decoder(text)
    try:
        value = decoder(text)
    except RecursionError:
        raise TooDeep(max_depth) from None
    return check(value, max_depth)
