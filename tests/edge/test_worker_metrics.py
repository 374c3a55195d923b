"""The supervisor's merge of its workers' expositions: every name kept, a worker label on
every sample, one family per name (the text parses back), readiness worker by worker."""

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.edge.worker_metrics import WorkerMetrics, _Families, label, merge

WORKER_TEXT = """# HELP coapbridge_uplinks_acknowledged_total uplinks stored and answered 2.01
# TYPE coapbridge_uplinks_acknowledged_total counter
coapbridge_uplinks_acknowledged_total %d
# HELP coapbridge_outbox_entries uplinks waiting in the outbox
# TYPE coapbridge_outbox_entries gauge
coapbridge_outbox_entries %d
# HELP coapbridge_coap_request_seconds time from a CoAP request to its answer
# TYPE coapbridge_coap_request_seconds histogram
coapbridge_coap_request_seconds_bucket{le="0.001"} %d
coapbridge_coap_request_seconds_bucket{le="+Inf"} %d
coapbridge_coap_request_seconds_count %d
coapbridge_coap_request_seconds_sum 0.5
"""


def parse(text):
    return list(text_string_to_metric_families(text))


def test_merged_families_keep_their_names_and_types_with_a_worker_label():
    one = label(parse(WORKER_TEXT % (5, 1, 4, 5, 5)), "1")
    two = label(parse(WORKER_TEXT % (7, 0, 6, 7, 7)), "2")
    text = generate_latest(_Families(merge([one, two]))).decode()
    families = {f.name: f for f in parse(text)}
    assert text.count("# TYPE coapbridge_uplinks_acknowledged_total counter") == 1
    acked = families["coapbridge_uplinks_acknowledged"]
    assert acked.type == "counter"
    assert {(s.labels["worker"], s.value) for s in acked.samples} == {("1", 5.0), ("2", 7.0)}
    assert families["coapbridge_outbox_entries"].type == "gauge"
    histogram = families["coapbridge_coap_request_seconds"]
    assert histogram.type == "histogram"
    buckets = {(s.labels["worker"], s.labels["le"]): s.value for s in histogram.samples
               if s.name.endswith("_bucket")}
    assert buckets == {("1", "0.001"): 4.0, ("1", "+Inf"): 5.0, ("2", "0.001"): 6.0,
                       ("2", "+Inf"): 7.0}


def test_worker_metrics_report_up_restarts_and_skip_a_worker_that_did_not_answer():
    metrics = WorkerMetrics(reactor=None, ports=lambda: {}, restarts={1: 0, 2: 3}.get)
    families = {f.name: f for f in metrics._merged([(1, (200, WORKER_TEXT % (1, 0, 1, 1, 1))),
                                                     (2, None)])}
    assert {s.labels["worker"]: s.value for s in families["coapbridge_worker_up"].samples} \
        == {"1": 1, "2": 0}
    assert {s.labels["worker"]: s.value
            for s in families["coapbridge_worker_restarts"].samples} == {"1": 0, "2": 3}
    assert [s.labels["worker"] for s in families["coapbridge_uplinks_acknowledged"].samples] \
        == ["1"]
    memory = families["process_resident_memory_bytes"].samples
    assert [s.labels["worker"] for s in memory] == ["supervisor"]


def test_the_pod_is_ready_while_every_worker_that_answers_is_ready():
    ready = (200, "ready\n")
    degraded = (200, "ready; degraded: mqtt not connected\n")
    assert WorkerMetrics._aggregate([(1, ready), (2, ready)]) == ([], [], [])
    assert WorkerMetrics._aggregate([(1, degraded), (2, ready)]) == (
        [], ["worker 1: mqtt not connected"], [])
    # a worker restarting: the kernel gives its devices to the other's socket meanwhile
    assert WorkerMetrics._aggregate([(1, ready), (2, None)]) == (
        [], ["worker 2 not serving"], [])


def test_the_pod_is_not_ready_when_a_worker_says_so_or_none_serves():
    full = (503, "not ready: outbox full (1000 entries); degraded: mqtt not connected\n")
    assert WorkerMetrics._aggregate([(1, full), (2, (200, "ready\n"))]) == (
        ["worker 1: outbox full (1000 entries)"], ["worker 1: mqtt not connected"], [])
    assert WorkerMetrics._aggregate([(1, None), (2, None)]) == (
        ["no worker serving"], ["worker 1 not serving", "worker 2 not serving"], [])


def test_the_workers_notes_follow_once_whether_they_are_ready_or_not():
    note = "platform changes waiting for the registry: 2"
    answers = [(1, (503, "not ready: outbox full (9 entries)\n%s\n" % note)),
               (2, (200, "ready; degraded: registry not reachable\n%s\n" % note))]
    assert WorkerMetrics._aggregate(answers) == (
        ["worker 1: outbox full (9 entries)"], ["worker 2: registry not reachable"], [note])


def test_a_scrape_that_fails_is_answered_500_and_logged_with_its_traceback():
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher
    from twisted.web.test.requesthelper import DummyRequest

    from bridge.edge.worker_metrics import _Deferred

    class Broken(_Deferred):
        def answer(self, request):
            return defer.fail(ValueError("a worker's text does not parse"))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        request = DummyRequest([b"metrics"])
        Broken().render_GET(request)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert request.responseCode == 500 and request.finished
    [failure] = [e for e in events if "log_failure" in e]
    assert failure["log_failure"].check(ValueError)
    failure["log_failure"].cleanFailure()
