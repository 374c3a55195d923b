"""The supervisor's metrics port: every worker's metrics in one exposition, and the probes.

Each worker serves its own ``/metrics`` and ``/readyz`` on a private port on
127.0.0.1 (``BridgeService`` with ``worker``); the supervisor reads them when
it is scraped and answers with all of them, each sample labelled
``worker="N"``, and its own process metrics as ``worker="supervisor"``, plus
``coapbridge_worker_up`` and ``coapbridge_worker_restarts_total`` per worker.

Why scraping and not ``prometheus_client``'s multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``): the bridge's counters and gauges are read from
its state when scraped (a collector, see ``bridge/edge/metrics.py``) and its
histograms are its own, while the multiprocess mode only works for the
library's ``Counter``/``Gauge``/``Histogram`` objects writing memory-mapped
files on every change, and sums or drops gauges rather than labelling them.
Scraping keeps every existing name, type and help text as it is, adds the
``worker`` label (``sum by`` gives the totals), and costs nothing between
scrapes.

``/readyz`` aggregates the workers': 503 when a worker answers that it is not ready
(the devices the kernel gives its socket would be refused), or when no worker serves
at all; a worker that does not answer (starting, restarting after a crash) is named
as degraded but leaves the pod ready, for the kernel gives its devices to the other
workers' sockets meanwhile; what a worker reports as degraded (its MQTT link) is named,
worker by worker. ``/healthz`` is 200 while the supervisor's reactor answers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..logs import logger
from .metrics import PREFIX, TEXT, HealthResource, MetricsSite, parse_ready, render_ready

log = logger("supervisor")
SCRAPE_TIMEOUT = 5.0  # s for one worker to answer

# worker number -> its private metrics port (None: not started)
Ports = Callable[[], Dict[int, Optional[int]]]


def label(families: Sequence[Metric], worker: str) -> List[Metric]:
    """``families`` with ``worker`` added to the labels of every sample."""
    labelled = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [sample._replace(labels=dict(sample.labels, worker=worker))
                        for sample in family.samples]
        labelled.append(copy)
    return labelled


def merge(groups: Sequence[Sequence[Metric]]) -> List[Metric]:
    """One family per name: the samples of every group's family of that name, in order."""
    merged: Dict[str, Metric] = {}
    for families in groups:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = into = Metric(family.name, family.documentation,
                                                    family.type, family.unit)
            into.samples.extend(family.samples)
    return list(merged.values())


class _QuietFactory(_HTTP11ClientFactory):
    """The pool's connection factory without its info line per connection (the pool takes
    its factory class from ``_factory``, a private attribute of Twisted's)."""
    noisy = False


class _Families:
    """A collector handing out the families given to it (for the encoders)."""

    def __init__(self, families: List[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class WorkerMetrics:
    """Reads the workers' metrics and readiness over HTTP on 127.0.0.1."""

    def __init__(self, reactor: Any, ports: Ports, restarts: Callable[[int], int],
                 idle_timeout: float = 10.0):
        self.reactor = reactor
        self.ports = ports
        self.restarts = restarts
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # closed before the worker's site closes it for being idle (metrics.idle_timeout)
        self.pool.cachedConnectionTimeout = idle_timeout / 2
        self.pool._factory = _QuietFactory  # no log line per connection, at each scrape
        self.agent = Agent(reactor, connectTimeout=SCRAPE_TIMEOUT, pool=self.pool)
        self.own = CollectorRegistry()  # the supervisor's own process
        ProcessCollector(registry=self.own)
        PlatformCollector(registry=self.own)
        GCCollector(registry=self.own)

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()

    def _get(self, port: int, path: str) -> defer.Deferred:
        """(status, body) of GET http://127.0.0.1:port/path."""
        d = self.agent.request(b"GET", b"http://127.0.0.1:%d%s" % (port, path.encode()))
        d.addCallback(lambda response: readBody(response).addCallback(
            lambda body: (response.code, body.decode("utf-8", "replace"))))
        d.addTimeout(SCRAPE_TIMEOUT, self.reactor)
        return d

    def _each(self, path: str) -> defer.Deferred:
        """[(worker, (status, body) or None)] of every worker: None when it has not started
        or did not answer."""
        ports = self.ports()
        calls = []
        for worker, port in sorted(ports.items()):
            if port is None:
                calls.append(defer.succeed(None))
            else:
                calls.append(self._get(port, path).addErrback(lambda _: None))
        d = defer.gatherResults(calls)
        d.addCallback(lambda results: list(zip(sorted(ports), results)))
        return d

    def collect(self) -> defer.Deferred:
        """Every worker's families labelled by worker, and the supervisor's own."""
        return self._each("/metrics").addCallback(self._merged)

    def _merged(self, answers: List[Tuple[int, Any]]) -> List[Metric]:
        up = GaugeMetricFamily(PREFIX + "worker_up", "1 while the worker answers its "
                               "supervisor's scrape", labels=["worker"])
        restarts = CounterMetricFamily(PREFIX + "worker_restarts", "worker processes "
                                       "restarted after they ended", labels=["worker"])
        groups = [label(list(self.own.collect()), "supervisor")]
        for worker, answer in answers:
            ok = answer is not None and answer[0] == 200
            up.add_metric([str(worker)], 1 if ok else 0)
            restarts.add_metric([str(worker)], self.restarts(worker))
            if ok:
                groups.append(label(list(text_string_to_metric_families(answer[1])),
                                    str(worker)))
        return merge(groups + [[up, restarts]])

    def readiness(self) -> defer.Deferred:
        """(missing, degraded, notes) of the pod, from every worker's ``/readyz`` (notes
        each once: workers of one DATA_DIR share its journal, so they say the same)."""
        return self._each("/readyz").addCallback(self._aggregate)

    @staticmethod
    def _aggregate(answers: List[Tuple[int, Any]]) -> Tuple[List[str], List[str], List[str]]:
        missing: List[str] = []
        degraded: List[str] = []
        notes: List[str] = []
        serving = 0
        for worker, answer in answers:
            if answer is None:
                degraded.append("worker %d not serving" % worker)
                continue
            lacks, worse, said = parse_ready(answer[1])
            if answer[0] == 200:
                serving += 1
            else:
                missing += ["worker %d: %s" % (worker, text) for text in lacks or ["not ready"]]
            degraded += ["worker %d: %s" % (worker, text) for text in worse]
            notes += [line for line in said if line not in notes]
        if not serving and not missing:
            missing.append("no worker serving")
        return missing, degraded, notes


class _Deferred(Resource):
    """A resource answered when ``answer(request)``'s Deferred fires with the body."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def write(body: bytes) -> None:
            if not finished[0]:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("Cannot answer a scrape of the workers' metrics", failure)
            if not finished[0]:
                request.setResponseCode(500)
                request.write(b"internal error\n")
                request.finish()
        self.answer(request).addCallback(write).addErrback(failed)
        return NOT_DONE_YET

    def answer(self, request: Any) -> defer.Deferred:
        raise NotImplementedError


class _AllMetrics(_Deferred):
    def __init__(self, metrics: WorkerMetrics):
        super().__init__()
        self.metrics = metrics

    def answer(self, request: Any) -> defer.Deferred:
        accept = request.getHeader(b"accept") or ""
        encode, content_type = choose_encoder(accept if isinstance(accept, str)
                                              else accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return self.metrics.collect().addCallback(lambda families: encode(_Families(families)))


class _AllReady(_Deferred):
    def __init__(self, readiness: Callable[[], defer.Deferred]):
        super().__init__()
        self.readiness = readiness

    def answer(self, request: Any) -> defer.Deferred:
        request.setHeader(b"content-type", TEXT)

        def body(state: Tuple[List[str], List[str], List[str]]) -> bytes:
            status, text = render_ready(*state)
            request.setResponseCode(status)
            return text
        return self.readiness().addCallback(body)


class SupervisorSite(MetricsSite):
    """``/metrics`` of all workers, ``/healthz``, and ``/readyz`` of all workers."""

    def __init__(self, metrics: WorkerMetrics,
                 readiness: Optional[Callable[[], defer.Deferred]] = None,
                 idle_timeout: float = 10.0, max_connections: int = 32):
        super().__init__(metrics.own, idle_timeout=idle_timeout,
                         max_connections=max_connections)
        root = Resource()
        root.putChild(b"metrics", _AllMetrics(metrics))
        root.putChild(b"healthz", HealthResource())
        root.putChild(b"readyz", _AllReady(readiness or metrics.readiness))
        self.resource = root
