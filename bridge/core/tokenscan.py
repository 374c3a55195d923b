"""Requests with unknown access tokens, summed up for the operator.

Each such request is answered 4.01 and logged at debug level only (a device
must not be able to flood the log), so a brute-force scan of tokens would
leave no trace. ``UnknownTokens`` counts them per source address and yields
one warning at most every ``interval`` seconds: how many since the last
warning, from how many addresses, and the busiest ones. The clock is the
caller's ``now``.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, Hashable, Optional, Tuple


class UnknownTokens:
    def __init__(self, interval: float = 60.0, top: int = 5, max_sources: int = 1000,
                 what: str = "an unknown access token", hint: str = "a token scan?"):
        self.interval = interval
        self.what, self.hint = what, hint  # what the requests had, for the warning
        self.top = top
        self.max_sources = max_sources  # addresses counted one by one per warning
        self.count = 0
        self.sources: Dict[Hashable, int] = {}
        self.since: Optional[float] = None  # first request counted since the last warning
        self.next_warning = float("-inf")

    def record(self, source: Hashable, now: float) -> None:
        """One request with an unknown token from ``source`` (an address)."""
        if not self.count:
            self.since = now
        self.count += 1
        sources = self.sources
        if source in sources:
            sources[source] += 1
        elif len(sources) < self.max_sources:
            sources[source] = 1

    def warning(self, now: float) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The warning due at ``now``, if any, as a log format and its fields: then counting
        starts again."""
        if not self.count or now < self.next_warning:
            return None
        busiest = heapq.nlargest(self.top, self.sources.items(), key=lambda kv: kv[1])
        counted = len(self.sources)
        assert self.since is not None
        fields = {
            "count": self.count, "seconds": now - self.since, "addresses": counted,
            "busiest": ", ".join("%s (%d)" % (source, n) for source, n in busiest),
            "what": self.what, "hint": self.hint,
        }
        self.count = 0
        self.sources = {}
        self.since = None
        self.next_warning = now + self.interval
        # the first request after a quiet spell is reported at once: no window to name
        return ("{count:plural:request} with {what}"
                + (" in the last {seconds:.0f} s" if fields["seconds"] >= 1 else "")
                + ", from " + ("at least " if counted >= self.max_sources else "")
                + "{addresses:plural:address:addresses} (answered 4.01; {hint}); most from "
                "{busiest}", fields)
