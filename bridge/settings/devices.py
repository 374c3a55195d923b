"""``devices:``: what the bridge assumes of a device it was not told about."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Problems, setting


@dataclass(frozen=True)
class DevicesConfig:
    """Devices as the bridge keeps them on the platform."""
    default_type: str = setting("default", "Profile (type) of devices added without one.",
                                env=("DEVICE_DEFAULT_TYPE",))
    idle_timeout: float = setting(
        600.0, "Seconds of silence after which a device gets v1/gateway/disconnect; an "
        "observing device's v1/gateway/connect is re-sent every half of it (ThingsBoard "
        "routes downlinks to the gateway connection that connected a device last).",
        low=0, high=30 * 86400, above=True, unit="s", env=("DEVICE_IDLE_TIMEOUT",))


def check(config: Any, problems: Problems) -> None:
    if not config.devices.default_type:
        problems.add("devices.default_type", "devices.default_type: must not be empty")
