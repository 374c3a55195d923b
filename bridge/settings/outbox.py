"""``outbox:``: the durable store of uplinks between the device's 2.01 and the PUBACK."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting


@dataclass(frozen=True)
class OutboxConfig:
    """Every uplink is stored here (DATA_DIR/outbox.sqlite3) before the device gets 2.01,
    and leaves only after the broker's PUBACK. When one of these bounds is reached, devices
    get 5.03 with Max-Age until the backlog drains; nothing acknowledged is ever evicted."""
    max_entries: int = setting(1_000_000, "Uplinks stored at most.", low=1,
                               high=1_000_000_000)
    max_bytes: int = setting(512 * 1024 * 1024, "Bytes of stored uplinks at most.", low=1,
                             high=2 ** 40, unit="bytes")
    max_age: float = setting(7 * 86400.0, "Seconds: when the oldest waiting entry is older, "
                             "new uplinks are refused.", low=0, high=366 * 86400, above=True,
                             unit="s")
    synchronous: str = setting(
        "full", "full: a stored uplink survives a power cut; normal: it survives a crash of "
        "the bridge, and commits are cheaper.", choices=("full", "normal"))
    max_batch: int = setting(
        100, "Uplinks of many devices in one v1/gateway/telemetry publish at most (and at "
        "most mqtt.max_packet_size); one PUBACK then settles them all. Batches only form "
        "while earlier publishes wait for their PUBACK. 1: one publish per uplink.",
        low=1, high=10_000)
