"""Token buckets for rate limits (RFC 8516: 4.29 Too Many Requests with Max-Age).

``RateLimiter`` keeps one bucket per key (a device name or a source address) of
requests, or of bytes when each ``allow`` says what it costs,
and forgets buckets that have refilled, so hostile traffic from many
addresses cannot grow it without bound beyond ``max_keys``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Hashable, List, NoReturn, Optional, Tuple

from . import codes
from .actions import Device
from .parts import Action, Part, address

if TYPE_CHECKING:
    from ..settings.limits import LimitsConfig


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_keys: int = 100_000):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.enabled = rate > 0
        self.buckets: "OrderedDict[Hashable, Tuple[float, float]]" = OrderedDict()

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> Optional[int]:
        """None when ``cost`` tokens (at most the burst) were taken; otherwise the seconds
        until they are available (for Max-Age)."""
        if not self.enabled:
            return None
        burst, buckets = self.burst, self.buckets
        if cost > burst:
            cost = burst
        bucket = buckets.pop(key, None)
        if bucket is None:
            tokens = burst
        else:
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            if tokens > burst:
                tokens = burst
        if tokens >= cost:
            buckets[key] = (tokens - cost, now)
            if len(buckets) > self.max_keys:
                self._bound()
            return None
        buckets[key] = (tokens, now)
        if len(buckets) > self.max_keys:
            self._bound()
        return max(1, math.ceil((cost - tokens) / self.rate))

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again (they behave exactly like new ones)."""
        full_after = self.burst / self.rate if self.enabled else 0.0
        for key in [k for k, (_, stamp) in self.buckets.items() if now - stamp >= full_after]:
            del self.buckets[key]

    def _bound(self) -> None:
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)


class RequestLimits(Part):
    """The request budgets of ``limits``: per source address (checked first, before the
    credential is looked at) and per device; over budget is 4.29 with Max-Age."""

    def __init__(self, limits: "LimitsConfig"):
        super().__init__()
        self.peers = RateLimiter(limits.peer_rate, limits.peer_burst)
        self.devices = RateLimiter(limits.device_rate, limits.device_burst)
        self.stats = {"rate_limited": 0}

    def peer(self, remote: Any, now: float) -> None:
        wait = self.peers.allow(address(remote), now)
        if wait is not None:
            self.refuse_peer(wait)

    def refuse_peer(self, wait: int) -> NoReturn:
        """4.29: the source address is over its budget for ``wait`` seconds (what ``peer``
        raises; the bulk path calls ``peers.allow`` itself)."""
        self.stats["rate_limited"] += 1
        raise codes.TooManyRequests("too many requests from this address", max_age=wait)

    def device(self, device: Device, now: float) -> None:
        wait = self.devices.allow(device.name, now)
        if wait is not None:
            self.refuse_device(wait)

    def refuse_device(self, wait: int) -> NoReturn:
        self.stats["rate_limited"] += 1
        raise codes.TooManyRequests("too many requests for this device", max_age=wait)

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        if slow:
            self.peers.sweep(now)
            self.devices.sweep(now)
        return []
