"""``platform:``: waiting for the platform, and what is held for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Problems, setting


@dataclass(frozen=True)
class PlatformConfig:
    """Requests that wait for the platform's answer, and server-side RPCs held for devices."""
    request_timeout: float = setting(
        10.0, "Seconds to wait for the platform to answer an attribute read or a client-side "
        "RPC; the device then gets 5.04 Gateway Timeout.", low=0, high=3600, above=True,
        unit="s")
    rpc_queue_size: int = setting(
        100, "Server-side RPCs held per device (waiting for it to observe /rpc, or queued "
        "behind a notification it has not acknowledged); more are dropped and counted, never "
        "sent late.", low=1, high=100_000)
    rpc_queue_ttl: float = setting(60.0, "Seconds a held server-side RPC lives from its "
                                   "arrival.", low=0, high=7 * 86400, above=True, unit="s")
    client_rpc_method: str = setting(
        "deviceRpc", "The method of the gateway's own RPC that carries a device's client-side "
        "RPC (v1/devices/me/rpc/request/{n} {\"method\": THIS, \"params\": {\"device\", "
        "\"method\", \"params\"}}).")


def check(config: Any, problems: Problems) -> None:
    if not config.platform.client_rpc_method:
        problems.add("platform.client_rpc_method",
                     "platform.client_rpc_method: must not be empty")
