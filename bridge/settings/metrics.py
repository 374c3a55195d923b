"""``metrics:``: the HTTP port of /metrics and the probes /healthz and /readyz."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting


@dataclass(frozen=True)
class MetricsConfig:
    """GET http://BIND_ADDRESS:PORT/metrics in the Prometheus text format, and the probes
    /healthz (the reactor runs) and /readyz (the bridge can accept and store uplinks: see
    health)."""
    bind_address: str = setting("127.0.0.1", "Address of the metrics port (an IP address "
                                "of this host).", address=True)
    port: int = setting(9683, "TCP port of /metrics, /healthz and /readyz. 0: off.",
                        low=0, high=65535, port=True)
    idle_timeout: float = setting(
        10.0, "Seconds an HTTP connection may stay open without a request; then it is "
        "closed.", low=0, high=3600, above=True, unit="s")
    max_connections: int = setting(
        32, "HTTP connections open at once. A new one past it closes the longest-open idle "
        "one (a probe still gets in), or is refused when all are busy: idle connections "
        "never take the descriptors CoAP needs.", low=1, high=4096)
