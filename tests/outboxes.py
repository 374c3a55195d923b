"""Reading and dead-lettering an outbox the way the tests need, through the outbox's own
product calls (``load_slice``, ``write``): the product reads its outbox in slices only and
dead-letters inside ``write``, so these helpers live in tests (issue #25.3)."""

from __future__ import annotations

from typing import Iterable, List, Tuple

from bridge.core.actions import Entry
from bridge.edge.outbox import Outbox

_EVERY_ROW, _EVERY_BYTE = 2 ** 31, 2 ** 62


def stored(outbox: Outbox) -> List[Entry]:
    """Every entry waiting in ``outbox``, in id order."""
    return outbox.load_slice(0, _EVERY_ROW, _EVERY_BYTE)


def dead_letter(outbox: Outbox, items: Iterable[Tuple[int, str]], now: float) -> None:
    """Move the entries ``items`` (id, reason) to dead letters, in one transaction."""
    outbox.write((), (), list(items), now)
