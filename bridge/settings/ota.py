"""``ota:``: firmware and software packages, fetched once and served from a cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Problems, setting


@dataclass(frozen=True)
class OtaConfig:
    """Where firmware/software packages come from. Each package is fetched once, verified
    against fw_checksum, and cached under DATA_DIR/ota."""
    source: str = setting(
        "upstream", "upstream: ThingsBoard's device OTA topics, with the device's access "
        "token; directory: files DIRECTORY/<title>/<version>.",
        choices=("upstream", "directory"))
    directory: str = setting("", "The package directory of source directory.")
    chunk_size: int = setting(16384, "Bytes per upstream chunk request (below "
                              "mqtt.max_packet_size).", low=1, high=16 * 1024 * 1024,
                              unit="bytes")
    timeout: float = setting(120.0, "Seconds an upstream download may take.", low=0,
                             high=86400, above=True, unit="s")
    cache_max_bytes: int = setting(
        1024 * 1024 * 1024, "Bytes of cached packages; a package served in the last 5 "
        "minutes is kept even beyond this (devices may be downloading it), with a warning.",
        low=1, high=2 ** 44, unit="bytes")


def check(config: Any, problems: Problems) -> None:
    if problems.fine("ota.chunk_size", "mqtt.max_packet_size") and \
            config.ota.chunk_size > config.mqtt.max_packet_size - 128:
        problems.add("ota.chunk_size", "ota.chunk_size: must stay below mqtt.max_packet_size")
    if config.ota.source == "directory" and not config.ota.directory:
        problems.add("ota.directory", "ota.directory: source directory needs a directory")
