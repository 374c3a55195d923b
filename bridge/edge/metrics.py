"""Metrics over HTTP in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from twisted.web.resource import Resource

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
