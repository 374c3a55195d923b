"""``metrics:``: the HTTP port of /metrics and the probes /healthz and /readyz."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting


@dataclass(frozen=True)
class MetricsConfig:
    """GET http://BIND_ADDRESS:PORT/metrics in the Prometheus text format, and the probes
    /healthz (the reactor runs) and /readyz (CoAP listens, MQTT is up, the registry
    answers)."""
    bind_address: str = setting("127.0.0.1", "Address of the metrics port (an IP address "
                                "of this host).", address=True)
    port: int = setting(9683, "TCP port of /metrics, /healthz and /readyz. 0: off.",
                        low=0, high=65535, port=True)
