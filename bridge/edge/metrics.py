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
``/readyz`` answers 200 while the bridge can accept and store uplinks
(``bridge.glue.readiness``), ``ready`` or ``ready; degraded: mqtt not connected``,
otherwise 503 and ``not ready: ...`` naming what is missing (a readiness probe,
a load balancer's check). What an operator should know either way follows on lines
of its own (``notes``: the platform changes journaled for a registry that is away).

A scrape or a probe is normal traffic: its access line is logged at debug, not
at info (``twisted.web``'s default), so a Prometheus polling every few seconds
or a Kubernetes probe does not fill the log.

Idle connections are bounded, so they never take the descriptors CoAP needs: a
connection without a request for ``metrics.idle_timeout`` seconds is closed (Twisted's
own default is a minute), and at most ``metrics.max_connections`` are open; a new one
past that closes the longest-open connection that has no request in progress (so a
probe gets in through a flood of idle connections), or is refused when every one is
busy. Twisted's ``policies.LimitTotalConnectionsFactory`` refuses the newcomer instead,
which would let idle connections lock the probes out.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from .. import __version__
from ..logs import logger

log = logger("bridge.metrics")



class Labelled(NamedTuple):
    """A metric's samples by label: the label names and ([values], number) pairs."""
    labels: Tuple[str, ...]
    samples: Iterable[Tuple[Sequence[str], float]]


# kind ("counter" or "gauge"), help text, value (a number, or Labelled)
Value = Tuple[str, str, Any]
Readiness = Callable[[], Tuple[List[str], List[str]]]  # (missing, degraded)
TEXT = b"text/plain; charset=utf-8"
PREFIX = "coapbridge_"
# a request is answered in the turn (a read), after the group commit (an uplink, ~ms), or
# after the platform (an attribute request, a client RPC: up to its timeout)
REQUEST_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
# stored to PUBACK: the broker's round trip, or an outage's backlog
DELIVERY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300,
                    900, 3600)
# a DTLS handshake from its verified ClientHello to its Finished: the device's round trips
HANDSHAKE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
HANDSHAKE_OUTCOMES = ("full", "resumed", "failed", "timeout")
# how the device authenticated: a PSK, a certificate, or none (a token in the path;
# for a failure: no credential seen before it failed)
HANDSHAKE_METHODS = ("psk", "x509", "none")


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

    def buckets(self) -> List[Tuple[str, float]]:
        buckets, total = [], 0
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return buckets

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.text, buckets=self.buckets(),
                                     sum_value=self.sum)


class HandshakeMetrics:
    """DTLS handshakes by outcome and method, and the time of those that completed by
    method: the transport reports each (``record``, its ``on_handshake``)."""

    def __init__(self) -> None:
        self.counts = {(outcome, method): 0 for outcome in HANDSHAKE_OUTCOMES
                       for method in HANDSHAKE_METHODS}
        self.seconds = {method: ReactorHistogram(
            PREFIX + "dtls_handshake_seconds", "", HANDSHAKE_BUCKETS)
            for method in HANDSHAKE_METHODS}

    def record(self, outcome: str, method: str, seconds: float) -> None:
        key = (outcome, method if method in HANDSHAKE_METHODS else "none")
        if key in self.counts:
            self.counts[key] += 1
            if outcome in ("full", "resumed"):
                self.seconds[key[1]].observe(seconds)

    def families(self) -> List[Metric]:
        counts = CounterMetricFamily(PREFIX + "dtls_handshakes", "DTLS handshakes by outcome "
                                     "(full, resumed, failed, timeout) and method (psk, "
                                     "x509, none)", labels=["outcome", "method"])
        for (outcome, method), count in self.counts.items():
            counts.add_metric([outcome, method], count)
        seconds = HistogramMetricFamily(PREFIX + "dtls_handshake_seconds", "time from a "
                                        "verified ClientHello to the handshake's end, by "
                                        "method (completed handshakes)", labels=["method"])
        for method, histogram in self.seconds.items():
            seconds.add_metric([method], histogram.buckets(), histogram.sum)
        return [counts, seconds]


def build_info() -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + "build_info", "the running coapbridge: its version "
                               "and Python", labels=["version", "python"])
    family.add_metric([__version__, "%s %s" % (platform.python_implementation(),
                                               platform.python_version())], 1)
    return family


class _BridgeCollector:
    """The bridge's counters and gauges, read when scraped, its histograms, and the
    families ``more()`` gives (the DTLS handshakes)."""

    def __init__(self, collect: Callable[[], Dict[str, Value]],
                 histograms: Sequence[ReactorHistogram],
                 more: Callable[[], Iterable[Metric]]):
        self.collect_values = collect
        self.histograms = histograms
        self.more = more

    def collect(self) -> Iterator[Metric]:
        yield build_info()
        for name, (kind, text, value) in sorted(self.collect_values().items()):
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            if isinstance(value, Labelled):
                labelled = family(PREFIX + name, text, labels=value.labels)
                for labels, number in value.samples:
                    labelled.add_metric(labels, number)
                yield labelled
            else:
                yield family(PREFIX + name, text, value=value)
        for histogram in self.histograms:
            yield histogram.family()
        yield from self.more()


class BridgeMetrics:
    """The bridge's own ``CollectorRegistry`` and the histograms it observes."""

    def __init__(self, collect: Callable[[], Dict[str, Value]],
                 more: Callable[[], Iterable[Metric]] = lambda: ()):
        self.request_seconds = ReactorHistogram(
            PREFIX + "coap_request_seconds", "time from a CoAP request to its answer",
            REQUEST_BUCKETS)
        self.delivery_seconds = ReactorHistogram(
            PREFIX + "uplink_delivery_seconds", "time from an uplink stored (and answered "
            "2.01) to the PUBACK that delivered it", DELIVERY_BUCKETS)
        self.registry = CollectorRegistry()
        self.registry.register(_BridgeCollector(
            collect, (self.request_seconds, self.delivery_seconds), more))
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


def render_ready(missing: List[str], degraded: List[str],
                 notes: Sequence[str] = ()) -> Tuple[int, bytes]:
    """``/readyz``'s status and body: ``ready``, ``ready; degraded: ...`` (200) or
    ``not ready: ...[; degraded: ...]`` (503), then one line a note."""
    text = ("not ready: " + ", ".join(missing)) if missing else "ready"
    if degraded:
        text += "; degraded: " + ", ".join(degraded)
    return (503 if missing else 200), "".join(
        line + "\n" for line in [text] + list(notes)).encode("utf-8")


def parse_ready(body: str) -> Tuple[List[str], List[str], List[str]]:
    """What ``render_ready`` wrote: (missing, degraded, notes)."""
    first, *notes = body.strip().splitlines() or [""]
    text, _, degraded = first.partition("; degraded: ")
    missing = text[len("not ready: "):].split(", ") if text.startswith("not ready: ") else []
    return missing, (degraded.split(", ") if degraded else []), [n for n in notes if n]


class ReadyResource(Resource):
    """``/readyz``: ``render_ready`` of what ``check()`` says, and ``notes()``."""

    isLeaf = True

    def __init__(self, check: Readiness, notes: Callable[[], List[str]] = lambda: []):
        super().__init__()
        self.check = check
        self.notes = notes

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", TEXT)
        status, body = render_ready(*self.check(), self.notes())
        request.setResponseCode(status)
        return body


class _Channel(HTTPChannel):
    """A connection of the metrics port: its site knows it while it is open."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.opened(self)

    def connectionLost(self, reason: Any) -> None:
        self.site.closed(self)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        # as HTTPChannel's, with its info line per connection at debug
        log.debug("HTTP connection from {peer} idle: closed",
                  peer=getattr(self.transport.getPeer(), "host", "?"))
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class MetricsSite(Site):
    """``/metrics``, ``/healthz`` and ``/readyz`` as a site whose access lines go to the log
    at debug, and whose idle connections are bounded (see the module)."""

    noisy = False
    protocol = _Channel

    def __init__(self, registry: CollectorRegistry, check: Readiness = lambda: ([], []),
                 idle_timeout: float = 10.0, max_connections: int = 32,
                 notes: Callable[[], List[str]] = lambda: []):
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry))
        root.putChild(b"healthz", HealthResource())
        root.putChild(b"readyz", ReadyResource(check, notes))
        super().__init__(root, timeout=idle_timeout)
        self.max_connections = max_connections
        self.channels: Dict[_Channel, None] = {}  # open, the longest-open first
        self.evicted = 0  # idle connections closed for a new one
        self.refused = 0  # connections refused: max_connections busy
        self._refusal_noted = float("-inf")

    def buildProtocol(self, addr: Any) -> Optional[HTTPChannel]:
        if len(self.channels) >= self.max_connections:
            idle = next((c for c in self.channels if not c.requests), None)
            if idle is None:
                self.refused += 1
                now = self.reactor.seconds()
                if now >= self._refusal_noted + 60.0:
                    self._refusal_noted = now
                    log.warn("Metrics port: {count:plural:connection} busy "
                             "(metrics.max_connections): refusing new ones ({refused} so far)",
                             count=len(self.channels), refused=self.refused)
                return None
            del self.channels[idle]
            self.evicted += 1
            idle.transport.abortConnection()
        return super().buildProtocol(addr)

    def opened(self, channel: _Channel) -> None:
        self.channels[channel] = None

    def closed(self, channel: _Channel) -> None:
        self.channels.pop(channel, None)

    def log(self, request: Any) -> None:
        log.debug("HTTP {method} {uri} from {peer}: {code}", method=_text(request.method),
                  uri=_text(request.uri), peer=getattr(request.getClientAddress(), "host", "?"),
                  code=request.code)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
