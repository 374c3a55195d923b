"""``limits:``: request budgets (4.29), requests in progress (5.03) and JSON nesting."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting

MAX_JSON_DEPTH = 256  # well below Python's recursion limit (1000) with the reactor's frames


def _old(key: str) -> tuple:
    """Today's documented name of ``limits.KEY``: ``LIMIT_KEY``."""
    return ("LIMIT_" + key.upper(),)


@dataclass(frozen=True)
class LimitsConfig:
    """Token buckets (RFC 8516): past them a request gets 4.29 with Max-Age. Requests per
    second and burst per device, and per source address (many devices may share one address
    behind a carrier NAT: keep those generous)."""
    device_rate: float = setting(10.0, "Requests per second per device. 0: no limit.",
                                 low=0, high=1_000_000, env=_old("device_rate"))
    device_burst: float = setting(20.0, "Requests in a burst per device.", low=0,
                                  high=10_000_000, above=True, env=_old("device_burst"))
    peer_rate: float = setting(1000.0, "Requests per second per source address. 0: no "
                               "limit.", low=0, high=10_000_000, env=_old("peer_rate"))
    peer_burst: float = setting(2000.0, "Requests in a burst per source address.", low=0,
                                high=100_000_000, above=True, env=_old("peer_burst"))
    download_rate: float = setting(
        128 * 1024.0, "Bytes per second of package blocks (firmware, software: from the local "
        "cache, spending neither budget above) per device. 0: no limit.",
        low=0, high=2 ** 32, unit="bytes", env=_old("download_rate"))
    download_burst: float = setting(
        16 * 1024 * 1024.0, "Bytes of package blocks in a burst per device: a package up to "
        "this size downloads at full speed.", low=0, high=2 ** 40, above=True, unit="bytes",
        env=_old("download_burst"))
    max_pending_per_peer: int = setting(
        64, "Requests being processed at once (waiting for the platform, say) per source "
        "endpoint (address and port: one device); more get 5.03 with Max-Age.",
        low=1, high=1_000_000, env=_old("max_pending_per_peer"))
    max_pending_per_address: int = setting(
        4096, "Requests being processed at once per source address (all the devices behind "
        "one carrier NAT: keep it generous).", low=1, high=10_000_000,
        env=_old("max_pending_per_address"))
    json_max_depth: int = setting(
        32, "Deepest nesting of a JSON document: a device's (uplinks, RPC, claim, provision) "
        "deeper gets 4.00; a platform message (whose envelope may add 2 levels) is skipped "
        "with a warning. ThingsBoard's JSON values are a few levels deep, and Python's JSON "
        "decoder recurses per level.", low=1, high=MAX_JSON_DEPTH,
        why="Python decodes and encodes JSON recursively", env=_old("json_max_depth"))
