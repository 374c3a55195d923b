"""``health:``: what /readyz on the metrics port answers (``bridge.glue.readiness``)."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import setting


@dataclass(frozen=True)
class HealthConfig:
    """/readyz answers 200 while this bridge can accept and store uplinks: CoAP listening, the
    outbox writable and below its bounds, the registry loaded. A lost MQTT link (or shared
    registry) is reported in the body, the metrics and the log, and the bridge stays
    ready: the outbox holds the uplinks until the platform is back (docs/deployment.md,
    "Probes")."""
    ready_requires_mqtt: bool = setting(
        False, "Not ready without the MQTT link. Off: a platform outage leaves every "
        "instance ready, its uplinks stored and answered 2.01; on: the outage takes every "
        "instance out of the load balancer (see docs/deployment.md before setting it).")
