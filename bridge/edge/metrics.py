"""The metrics port: ``GET /metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

The metrics go through ``prometheus_client`` with a registry of the bridge's
own (``BridgeMetrics.registry``, not the library's global one, so tests and
several bridges in one process do not collide): the bridge's counters and
gauges as a collector read at scrape time (``Bridge.metrics()``, names and
types as before), the process metrics (memory, CPU, open files) and the
Python garbage collector's, and two histograms observed on the way:
``coapbridge_coap_request_seconds`` (a CoAP request to its answer) and
``coapbridge_uplink_delivery_seconds`` (an uplink stored and answered 2.01 to
the broker's PUBACK of it).

Both are observed once per uplink on the hot path, so they are
``ReactorHistogram``: bucket counts in a list, found by bisection, no lock (it
is only touched on the reactor thread), about 0.25 µs an observation against
about 2.3 µs for ``prometheus_client.Histogram`` (two locks and a linear scan
of the buckets), measured on the 2-core development machine; the library
still renders them (``HistogramMetricFamily``).

The exposition is rendered on the reactor thread by ``MetricsResource``:
``prometheus_client.twisted.MetricsResource`` is a WSGI resource that runs
the scrape in the reactor's thread pool, where it would read the core's state
while the reactor changes it (and it imports the global reactor).

``/healthz`` answers 200 whenever the reactor runs (a liveness probe);
``/readyz`` answers 200 only when the bridge can serve (CoAP listening, the
MQTT gateway link up, the registry reachable), otherwise 503 with one short
line naming what is not ready (a readiness probe, a load balancer's check). What
an operator should know either way follows on lines of its own (``notes``: the
platform changes journaled for a registry that is away).

A scrape or a probe is normal traffic: its access line is logged at debug, not
at info (``twisted.web``'s default), so a Prometheus polling every few seconds
or a Kubernetes probe does not fill the log.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..logs import logger

log = logger("bridge.metrics")

Value = Tuple[str, str, float]  # kind ("counter" or "gauge"), help text, value
TEXT = b"text/plain; charset=utf-8"
PREFIX = "coapbridge_"
# a request is answered in the turn (a read), after the group commit (an uplink, ~ms), or
# after the platform (an attribute request, a client RPC: up to its timeout)
REQUEST_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
# stored to PUBACK: the broker's round trip, or an outage's backlog
DELIVERY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300,
                    900, 3600)


class ReactorHistogram:
    """A histogram observed on the reactor thread only: ``observe`` is a bisection and two
    additions (no lock; a scrape runs on the reactor thread too)."""

    __slots__ = ("name", "text", "bounds", "counts", "sum")

    def __init__(self, name: str, text: str, buckets: Sequence[float]):
        self.name = name
        self.text = text
        self.bounds = sorted(float(bound) for bound in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket; the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds
        self.sum += seconds

    def family(self) -> HistogramMetricFamily:
        buckets, total = [], 0
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return HistogramMetricFamily(self.name, self.text, buckets=buckets,
                                     sum_value=self.sum)


class _BridgeCollector:
    """The bridge's counters and gauges, read when scraped, and its histograms."""

    def __init__(self, collect: Callable[[], Dict[str, Value]],
                 histograms: Sequence[ReactorHistogram]):
        self.collect_values = collect
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for name, (kind, text, value) in sorted(self.collect_values().items()):
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(PREFIX + name, text, value=value)
        for histogram in self.histograms:
            yield histogram.family()


class BridgeMetrics:
    """The bridge's own ``CollectorRegistry`` and the histograms it observes."""

    def __init__(self, collect: Callable[[], Dict[str, Value]]):
        self.request_seconds = ReactorHistogram(
            PREFIX + "coap_request_seconds", "time from a CoAP request to its answer",
            REQUEST_BUCKETS)
        self.delivery_seconds = ReactorHistogram(
            PREFIX + "uplink_delivery_seconds", "time from an uplink stored (and answered "
            "2.01) to the PUBACK that delivered it", DELIVERY_BUCKETS)
        self.registry = CollectorRegistry()
        self.registry.register(_BridgeCollector(
            collect, (self.request_seconds, self.delivery_seconds)))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)


class MetricsResource(Resource):
    """``/metrics``: the registry in the Prometheus text format (OpenMetrics if asked)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept") or ""
        encode, content_type = choose_encoder(accept if isinstance(accept, str)
                                              else accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return encode(self.registry)


class HealthResource(Resource):
    """``/healthz``: 200 while the reactor answers."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", TEXT)
        return b"ok\n"


def ready_body(missing: List[str], notes: List[str]) -> Tuple[int, bytes]:
    """``/readyz``'s status and body: ``ready`` or ``not ready: ...``, then one line a note."""
    first = "not ready: %s" % ", ".join(missing) if missing else "ready"
    return (503 if missing else 200), "".join(line + "\n" for line in [first] + notes
                                              ).encode("utf-8")


class ReadyResource(Resource):
    """``/readyz``: 200 when ``not_ready()`` names nothing, else 503 and what is not ready;
    ``notes()`` below."""

    isLeaf = True

    def __init__(self, not_ready: Callable[[], List[str]],
                 notes: Callable[[], List[str]] = lambda: []):
        super().__init__()
        self.not_ready = not_ready
        self.notes = notes

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", TEXT)
        code, body = ready_body(self.not_ready(), self.notes())
        request.setResponseCode(code)
        return body


class MetricsSite(Site):
    """``/metrics``, ``/healthz`` and ``/readyz`` as a site whose access lines go to the log
    at debug."""

    noisy = False

    def __init__(self, registry: CollectorRegistry,
                 not_ready: Callable[[], List[str]] = lambda: [],
                 notes: Callable[[], List[str]] = lambda: []):
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry))
        root.putChild(b"healthz", HealthResource())
        root.putChild(b"readyz", ReadyResource(not_ready, notes))
        super().__init__(root)

    def log(self, request: Any) -> None:
        log.debug("HTTP {method} {uri} from {peer}: {code}", method=_text(request.method),
                  uri=_text(request.uri), peer=getattr(request.getClientAddress(), "host", "?"),
                  code=request.code)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
