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
from typing import Dict, Hashable, Optional


class UnknownTokens:
    def __init__(self, interval: float = 60.0, top: int = 5, max_sources: int = 1000):
        self.interval = interval
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

    def warning(self, now: float) -> Optional[str]:
        """The warning due at ``now``, if any: then counting starts again."""
        if not self.count or now < self.next_warning:
            return None
        busiest = heapq.nlargest(self.top, self.sources.items(), key=lambda kv: kv[1])
        counted = len(self.sources)
        spread = "%s%d address%s" % ("at least " if counted >= self.max_sources else "",
                                     counted, "" if counted == 1 else "es")
        assert self.since is not None
        text = ("%d request%s with an unknown access token in the last %.0f s, from %s "
                "(answered 4.01; a token scan?); most from %s"
                % (self.count, "" if self.count == 1 else "s", now - self.since, spread,
                   ", ".join("%s (%d)" % (source, n) for source, n in busiest)))
        self.count = 0
        self.sources = {}
        self.since = None
        self.next_warning = now + self.interval
        return text
