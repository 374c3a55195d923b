"""Failed DTLS handshakes, summed up for the operator (sans-IO: the caller's ``now``).

Anyone can start handshakes, so one log line each at info level would let a
hostile client fill the log. ``HandshakeFailures`` counts failures (an alert or a
refused certificate) and timeouts (not finished by the deadline: a wrong PSK with an
AEAD suite ends this way) per source address, and yields one summary at most every
``interval`` seconds: the counts, how many addresses, the busiest ones and the last
reason. The first failure after a quiet minute is reported at once. Each failure is
still logged at debug level by the transport, and counted in its metrics.

Not ``core.tokenscan.UnknownTokens``: its line is about requests answered 4.01 and
it counts one kind; this one keeps two and the reason.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, Hashable, Optional, Tuple

FAILED = "failed"
TIMED_OUT = "timed out"


class HandshakeFailures:
    def __init__(self, interval: float = 60.0, top: int = 3, max_sources: int = 1000):
        self.interval = interval
        self.top = top
        self.max_sources = max_sources  # addresses counted one by one per summary
        self.counts = {FAILED: 0, TIMED_OUT: 0}
        self.sources: Dict[Hashable, int] = {}
        self.since: Optional[float] = None  # first failure counted since the last summary
        self.last_reason = ""
        self.next_summary = float("-inf")

    def record(self, kind: str, source: Hashable, reason: str, now: float) -> None:
        """One handshake from ``source`` (a host) that ``kind`` (FAILED or TIMED_OUT)."""
        if self.since is None:
            self.since = now
        self.counts[kind] += 1
        self.last_reason = reason
        sources = self.sources
        if source in sources:
            sources[source] += 1
        elif len(sources) < self.max_sources:
            sources[source] = 1

    def summary(self, now: float) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The line due at ``now``, if any, as a log format and its fields: then counting
        starts again."""
        if self.since is None or now < self.next_summary:
            return None
        busiest = heapq.nlargest(self.top, self.sources.items(), key=lambda kv: kv[1])
        counted = len(self.sources)
        count = self.counts[FAILED] + self.counts[TIMED_OUT]
        fields = {
            "count": count, "failed": self.counts[FAILED], "timed_out": self.counts[TIMED_OUT],
            "seconds": now - self.since, "addresses": counted,
            "busiest": ", ".join("%s (%d)" % (source, n) for source, n in busiest),
            "reason": self.last_reason,
        }
        self.counts = {FAILED: 0, TIMED_OUT: 0}
        self.sources = {}
        self.since = None
        self.next_summary = now + self.interval
        # the first failure after a quiet spell is reported at once: no window to name
        return ("{count:plural:DTLS handshake} did not complete"
                + (" in the last {seconds:.0f} s" if fields["seconds"] >= 1 else "")
                + " ({failed} failed, {timed_out} not finished within dtls.handshake_timeout, "
                "as with a wrong PSK), from "
                + ("at least " if counted >= self.max_sources else "")
                + "{addresses:plural:address:addresses}; most from {busiest}; last: {reason}",
                fields)
