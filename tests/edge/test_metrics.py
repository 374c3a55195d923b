"""The metrics through prometheus_client: every name and type of before, the process
metrics, the two histograms, and a registry per bridge."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core import codes
from bridge.edge.metrics import MetricsSite
from bridge.edge.outbox import Outbox
from bridge.glue.bridge import Bridge
from bridge.registry import Registry
from coaplayer import incoming

# The names and types of the hand-written exposition (tests and dashboards scrape them).
NAMES = {
    "coap_requests_total": "counter", "coap_errors_total": "counter",
    "coap_malformed_total": "counter", "uplinks_acknowledged_total": "counter",
    "uplinks_delivered_total": "counter", "uplink_publishes_total": "counter",
    "uplinks_dead_lettered_total": "counter", "outbox_commits_total": "counter",
    "outbox_refused_full_total": "counter", "outbox_store_failed_total": "counter",
    "rate_limited_total": "counter", "unknown_token_total": "counter",
    "rpc_expired_total": "counter", "rpc_dropped_total": "counter",
    "outbox_entries": "gauge", "outbox_bytes": "gauge", "inflight_publishes": "gauge",
    "observers": "gauge", "devices_connected": "gauge", "mqtt_connected": "gauge",
    "provisioning_busy_total": "counter", "mqtt_messages_skipped_total": "counter",
    "ota_fetches_total": "counter", "unknown_credential_total": "counter",
    "credential_mismatch_total": "counter", "devices_auto_registered_total": "counter",
    "coap_retransmissions_total": "counter", "devices_asleep": "gauge",
    "power_asleep_total": "counter", "power_awake_total": "counter",
    "notifications_withdrawn_total": "counter", "ready": "gauge", "registry_reachable": "gauge",
    "registry_changes_waiting": "gauge", "coap_send_failed_total": "counter",
}


class FakeLink:
    connected = True
    failed_messages = 0  # read by the metrics

    def __init__(self):
        self.sent = []  # (mid, topic) not acknowledged yet

    def publish(self, topic, payload):
        self.sent.append((len(self.sent) + 1, topic))
        return len(self.sent)


def scrape(bridge):
    site = MetricsSite(bridge.prometheus.registry)
    request = DummyRequest([b"metrics"])
    body = site.getResourceFor(request).render(request)
    return body.decode()


def samples(text):
    """{(sample name, labels as a tuple): value} and {family name: type}."""
    values, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values, types


# by route, code, transport; by transport and reason
LABELLED = {"coap_requests_total", "coap_errors_total", "coap_send_failed_total"}


def test_every_metric_keeps_its_name_and_type_and_the_process_metrics_come_along():
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    values, types = samples(scrape(bridge))
    assert set(bridge.metrics.values()) == set(NAMES)
    for name, kind in NAMES.items():
        family = "coapbridge_" + (name[:-len("_total")] if kind == "counter" else name)
        assert types[family] == kind, name
        if name not in LABELLED:  # those have a sample once a request is answered
            assert ("coapbridge_" + name, ()) in values, name
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds"):
        assert (name, ()) in values, name


def test_two_bridges_in_one_process_have_their_own_metrics():
    one, two = (Bridge(startup_checks.load(None, {}), Clock()) for _ in range(2))
    one.requests.counts.cell("telemetry", ("10.0.0.1", 5683)).codes[0x41] += 7
    key = ("coapbridge_coap_requests_total",
           (("code", "2.01"), ("route", "telemetry"), ("transport", "udp")))
    assert samples(scrape(one))[0][key] == 7
    assert key not in samples(scrape(two))[0]


def test_build_info_names_the_version_and_python():
    import platform

    from bridge import __version__
    values, types = samples(scrape(Bridge(startup_checks.load(None, {}), Clock())))
    [(labels, value)] = [(dict(k[1]), v) for k, v in values.items()
                         if k[0] == "coapbridge_build_info"]
    assert value == 1 and types["coapbridge_build_info"] == "gauge"
    assert labels == {"version": __version__, "python": "%s %s" % (
        platform.python_implementation(), platform.python_version())}


def test_request_to_answer_and_store_to_puback_times_are_histograms(tmp_path):
    clock = Clock()
    clock.advance(1000)
    bridge = Bridge(startup_checks.load(None, {}), clock)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.registry.add("Dev A", "tok", "thermo")
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.link = link = FakeLink()
    bridge.link_up()
    answer = bridge.handle_coap(incoming(("10.0.0.7", 5683), payload=b'{"t": 1}'))
    clock.advance(0.003)  # the end of the turn writes it: answered 3 ms after it came
    assert answer.result.message.code == codes.CREATED
    clock.advance(1)
    for mid, topic in link.sent:  # the device's connect, then its telemetry: 2 s after 2.01
        if topic.endswith("telemetry"):
            clock.advance(1)
        bridge.published(mid, 0)
        clock.advance(0)
    assert [topic for _, topic in link.sent] == ["v1/gateway/connect", "v1/gateway/telemetry"]
    values, types = samples(scrape(bridge))
    assert types["coapbridge_coap_request_seconds"] == "histogram"
    assert values[("coapbridge_coap_request_seconds_count", ())] == 1
    assert abs(values[("coapbridge_coap_request_seconds_sum", ())] - 0.003) < 1e-6
    assert values[("coapbridge_coap_request_seconds_bucket", (("le", "0.0025"),))] == 0
    assert values[("coapbridge_coap_request_seconds_bucket", (("le", "0.005"),))] == 1
    assert types["coapbridge_uplink_delivery_seconds"] == "histogram"
    assert values[("coapbridge_uplink_delivery_seconds_count", ())] == 1
    assert abs(values[("coapbridge_uplink_delivery_seconds_sum", ())] - 2.0) < 1e-6
    assert values[("coapbridge_uplinks_delivered_total", ())] == 1


def test_a_value_on_a_bucket_bound_counts_in_that_bucket_and_the_buckets_are_cumulative():
    from bridge.edge.metrics import ReactorHistogram
    histogram = ReactorHistogram("h_seconds", "h", (0.1, 1))
    for seconds in (0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    [count_01, count_1, count_inf, count, total] = [
        s.value for s in histogram.family().samples
        if s.name in ("h_seconds_bucket", "h_seconds_count", "h_seconds_sum")]
    assert (count_01, count_1, count_inf, count, total) == (1, 3, 4, 4, 8.6)


def test_dtls_metrics_appear_with_the_dtls_transport(tmp_path):
    """With CoAPs listening, its sessions and counters are scraped (names documented in
    docs/device-api.md); without it, none of them."""
    import os
    import random

    import dtlscerts
    from bridge.settings import DtlsConfig
    from bridge.edge import coap as coap_edge
    from bridge.edge.datagram import DatagramDriver
    from bridge.edge import dtls as dtls_edge
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    assert not any(name.startswith("dtls_") for name in bridge.metrics.values())
    cert, key = dtlscerts.issue("bridge", dtlscerts.ca()).write(str(tmp_path), "bridge")
    clock = Clock()
    coap = DatagramDriver(lambda m: None, clock, coap_edge.datagram_settings(0.5, 247))
    from bridge.dtls.events import DtlsPeer
    transport = dtls_edge.DtlsTransport(DtlsConfig(enabled=True, cert_file=cert, key_file=key),
                                        coap, clock, lambda identity: None,
                                        random.Random(2).randbytes)
    bridge.transports.join(DtlsPeer, transport, sender=coap)  # as CoAPs' service does
    transport.datagramReceived(b"\x17\xfe\xfd" + os.urandom(30), ("10.0.0.1", 5))
    values, types = samples(scrape(bridge))
    assert values[("coapbridge_dtls_dropped_total", ())] == 1
    assert values[("coapbridge_dtls_sessions", ())] == 0
    assert types["coapbridge_dtls_handshakes_full"] == "counter"
    assert types["coapbridge_dtls_handshakes_in_progress"] == "gauge"
    # every counter of the DTLS server is scraped (the handshake bounds' among them)
    assert values[("coapbridge_dtls_refused_address_total", ())] == 0
    assert values[("coapbridge_dtls_handshakes_evicted_total", ())] == 0


def test_reliable_metrics_appear_with_the_rfc8323_listeners():
    """With RFC 8323 listeners, their connections and refusals are scraped; without, none."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from bridge.settings import ReliableConfig
    from bridge.edge.stream import Hub, StreamProtocol
    bridge = Bridge(config_module.load(None, {}), Clock())
    assert not any(name.startswith("reliable_") for name in bridge.metrics.values())
    from bridge.edge.stream import StreamPeer
    hub = Hub(ReliableConfig(max_connections_per_address=1), lambda m: None, Clock(), 1024)
    bridge.transports.join(StreamPeer, hub)  # as the RFC 8323 listeners' service does
    for port in (1, 2):
        StreamProtocol(hub, "coap+tcp").makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port)))
    values, types = samples(scrape(bridge))
    assert values[("coapbridge_reliable_connections", ())] == 1
    assert values[("coapbridge_reliable_refused_total", ())] == 1
    assert types["coapbridge_reliable_aborted"] == "counter"
