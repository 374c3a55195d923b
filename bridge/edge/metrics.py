"""Metrics over HTTP in the Prometheus text format (``GET /metrics``).

A scrape is normal traffic: its access line is logged at debug, not at info
(``twisted.web``'s default), so a Prometheus polling every few seconds does
not fill the log.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from twisted.web.resource import Resource
from twisted.web.server import Site

from ..logs import logger

log = logger("bridge.metrics")

Metric = Tuple[str, str, float]  # kind ("counter" or "gauge"), help text, value


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


class MetricsSite(Site):
    """The metrics resource as a site whose access lines go to the log at debug."""

    noisy = False

    def __init__(self, collect: Callable[[], Dict[str, Metric]]):
        super().__init__(MetricsResource(collect))

    def log(self, request: Any) -> None:
        log.debug("HTTP {method} {uri} from {peer}: {code}", method=_text(request.method),
                  uri=_text(request.uri), peer=getattr(request.getClientAddress(), "host", "?"),
                  code=request.code)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
