"""Names that reach the registry, the logs and the CLI's tables: bounded, and free of
characters that rewrite a terminal or a log line.

Device names come from devices themselves (a provisioning request's ``deviceName``, an
auto-registered certificate's subject CN), from the platform (its rename RPC) and from
the operator (``coapbridge devices add``). ThingsBoard keeps a device name in 255
characters (its entities' ``@Length`` default) and so do we. A name must not hold:

* control characters (Unicode category Cc: C0 with ESC, which starts a terminal escape
  sequence, and newlines, which forge log lines; DEL; C1), line and paragraph
  separators (Zl, Zp), lone surrogates (Cs, which UTF-8 cannot carry);
* the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
  U+2066-U+2069), which reorder how the rest of a line is displayed.

``printable`` shows any text with such characters escaped (``\\x1b``, ``\\u202e``), for
what was stored before these checks or never passed them (a refused name in a log line).
"""

from __future__ import annotations

import unicodedata
from typing import Optional

MAX_NAME = 255
_BIDI = frozenset(map(chr, list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))))
_BAD_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))


def _bad(char: str) -> bool:
    if " " <= char <= "~":  # printable ASCII, the common case
        return False
    return char in _BIDI or unicodedata.category(char) in _BAD_CATEGORIES


def problem(name: str, what: str = "device name", limit: int = MAX_NAME) -> Optional[str]:
    """Why ``name`` cannot be used (``what`` says whose), or None."""
    if not name or not name.strip():
        return "%s must not be empty" % what
    if len(name) > limit:
        return "%s must be at most %d characters, got %d" % (what, limit, len(name))
    for char in name:
        if _bad(char):
            return ("%s must not contain control or text-direction characters (U+%04X)"
                    % (what, ord(char)))
    return None


def printable(text: str) -> str:
    """``text`` with every character ``problem`` refuses escaped as Python writes it."""
    if all(not _bad(char) for char in text):
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if _bad(char) else char
                   for char in text)
