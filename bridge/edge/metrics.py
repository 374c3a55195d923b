"""The metrics port: ``GET /metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 whenever the reactor runs (a liveness probe);
``/readyz`` answers 200 only when the bridge can serve (CoAP listening, the
MQTT gateway link up, the registry reachable), otherwise 503 with one short
line naming what is not ready (a readiness probe, a load balancer's check).

A scrape or a probe is normal traffic: its access line is logged at debug, not
at info (``twisted.web``'s default), so a Prometheus polling every few seconds
or a Kubernetes probe does not fill the log.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from twisted.web.resource import Resource
from twisted.web.server import Site

from ..logs import logger

log = logger("bridge.metrics")

Metric = Tuple[str, str, float]  # kind ("counter" or "gauge"), help text, value
TEXT = b"text/plain; charset=utf-8"


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, collect: Callable[[], Dict[str, Metric]]):
        super().__init__()
        self.collect = collect

    def render_GET(self, request: Any) -> bytes:
        lines = []
        for name, (kind, text, value) in sorted(self.collect().items()):
            full = "coapbridge_" + name
            lines.append("# HELP %s %s" % (full, text))
            lines.append("# TYPE %s %s" % (full, kind))
            lines.append("%s %s" % (full, repr(float(value)) if value != int(value) else int(value)))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return ("\n".join(lines) + "\n").encode("utf-8")


class HealthResource(Resource):
    """``/healthz``: 200 while the reactor answers."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", TEXT)
        return b"ok\n"


class ReadyResource(Resource):
    """``/readyz``: 200 when ``not_ready()`` names nothing, else 503 and what is not ready."""

    isLeaf = True

    def __init__(self, not_ready: Callable[[], List[str]]):
        super().__init__()
        self.not_ready = not_ready

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", TEXT)
        missing = self.not_ready()
        if not missing:
            return b"ready\n"
        request.setResponseCode(503)
        return ("not ready: %s\n" % ", ".join(missing)).encode("utf-8")


class MetricsSite(Site):
    """``/metrics``, ``/healthz`` and ``/readyz`` as a site whose access lines go to the log
    at debug."""

    noisy = False

    def __init__(self, collect: Callable[[], Dict[str, Metric]],
                 not_ready: Callable[[], List[str]] = lambda: []):
        root = Resource()
        root.putChild(b"metrics", MetricsResource(collect))
        root.putChild(b"healthz", HealthResource())
        root.putChild(b"readyz", ReadyResource(not_ready))
        super().__init__(root)

    def log(self, request: Any) -> None:
        log.debug("HTTP {method} {uri} from {peer}: {code}", method=_text(request.method),
                  uri=_text(request.uri), peer=getattr(request.getClientAddress(), "host", "?"),
                  code=request.code)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
