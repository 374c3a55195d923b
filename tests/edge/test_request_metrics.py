"""coapbridge_coap_requests_total{route,code,transport} through the real glue and core: each
answer counted by its route, code and the peer's transport; no device or address in a
label (many devices from many addresses make no new series)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bridge import settings as config_module
from bridge.core import codes
from bridge.core.routes import METRIC_ROUTES, metric_route
from bridge.edge.metrics import HandshakeMetrics, MetricsSite
from bridge.edge.outbox import Outbox
from bridge.glue.bridge import Bridge
from bridge.registry import Registry
from coaplayer import incoming

GET, POST = codes.GET, codes.POST


class FakeLink:
    connected = True
    failed_messages = 0

    def __init__(self):
        self.sent = []

    def publish(self, topic, payload):
        self.sent.append(topic)
        return len(self.sent)


class FakeSession:
    """A peer of another transport (as a DTLS session is): counted under its name."""

    credential = None

    def __init__(self, address):
        self.key = "fake %s" % (address,)
        self.address = address


def rig(tmp_path, devices=2):
    clock = Clock()
    clock.advance(1000)
    bridge = Bridge(config_module.load(None, {}), clock)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    for n in range(devices):
        bridge.registry.add("Dev %d" % n, "tok%d" % n, "default")
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.outbox_commit.restore()
    bridge.link = FakeLink()
    bridge.link_up()
    return bridge, clock


def send(bridge, clock, method, path, remote, payload=b"", mid=[0]):
    mid[0] += 1
    answer = bridge.handle_coap(incoming(
        remote, method, tuple(part.encode() for part in path.strip("/").split("/")),
        payload, b"t%d" % mid[0], mid[0] & 0xFFFF))
    clock.advance(0.003)  # the turn's end: the outbox written, the answers given
    return answer


def series(bridge, name="coapbridge_coap_requests_total"):
    site = MetricsSite(bridge.prometheus.registry)
    request = DummyRequest([b"metrics"])
    text = site.getResourceFor(request).render(request).decode()
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}


def labels(route, code, transport="udp"):
    return (("code", code), ("route", route), ("transport", transport))


def test_each_answer_is_counted_by_route_code_and_transport(tmp_path):
    bridge, clock = rig(tmp_path)
    bridge.requests.counts.register(FakeSession, "dtls")
    udp = ("10.0.0.7", 5683)
    send(bridge, clock, POST, "/api/v1/tok0/telemetry", udp, b'{"t": 1}')
    send(bridge, clock, POST, "/api/v1/tok0/telemetry", udp, b'{"t": 2}')
    send(bridge, clock, POST, "/api/v1/nope/telemetry", udp, b'{"t": 1}')
    send(bridge, clock, POST, "/api/v1/tok0/attributes", udp, b'{"a": 1}')
    send(bridge, clock, POST, "/api/v1/tok0/rpc/5", udp, b'{"ok": 1}')
    send(bridge, clock, POST, "/api/v1/tok0/claim", udp, b'{}')
    send(bridge, clock, GET, "/nothing/here", udp)
    send(bridge, clock, POST, "/api/v1/tok1/telemetry", FakeSession(udp), b'{"t": 3}')
    counted = series(bridge)
    assert counted == {
        labels("telemetry", "2.01"): 2, labels("telemetry", "4.01"): 1,
        labels("attributes", "2.01"): 1, labels("rpc_reply", "2.01"): 1,
        labels("claim", "2.01"): 1, labels("other", "4.04"): 1,
        labels("telemetry", "2.01", "dtls"): 1}
    assert series(bridge, "coapbridge_coap_errors_total") == {
        labels("telemetry", "4.01"): 1, labels("other", "4.04"): 1}


def test_many_devices_from_many_addresses_make_no_new_series(tmp_path):
    bridge, clock = rig(tmp_path, devices=300)

    def traffic(devices):
        for n in devices:
            remote = ("10.%d.%d.%d" % (n >> 16 & 255, n >> 8 & 255, n & 255), 1024 + n)
            send(bridge, clock, POST, "/api/v1/tok%d/telemetry" % n, remote, b'{"t": 1}')
            send(bridge, clock, POST, "/api/v1/bad%d/telemetry" % n, remote, b'{}')
            send(bridge, clock, GET, "/api/v1/tok%d/nonsense%d" % (n, n), remote)
            clock.advance(1)  # within the devices' rate
    traffic(range(3))
    few = series(bridge)
    traffic(range(3, 300))
    many = series(bridge)
    assert set(many) == set(few) and len(few) == 3
    assert sum(many.values()) == 900
    for labelset in many:  # no device name, token or address anywhere
        assert not any("Dev" in value or "tok" in value or "10." in value
                       for _, value in labelset)


def test_a_route_is_one_of_a_fixed_set_whatever_the_path():
    post, get = POST, GET
    assert [metric_route(method, tuple(path.split("/"))) for method, path in (
        (post, "api/v1/t/telemetry"), (post, "api/v1/t/attributes"),
        (get, "api/v1/t/attributes"), (get, "api/v1/t/rpc"), (post, "api/v1/t/rpc/12"),
        (post, "api/v1/t/rpc"), (post, "api/v1/t/claim"), (post, "api/v1/provision"),
        (get, "fw/t"), (get, "sw/t"), (get, "api/v1/t/firmware"), (post, "api/v1/rpc/3"),
        (get, "api/v1/t/zzz"), (get, "x"), (post, "api/v1/attributes"))] == [
        "telemetry", "attributes", "attributes_read", "rpc", "rpc_reply", "client_rpc",
        "claim", "provision", "firmware", "software", "firmware", "rpc_reply", "other",
        "other", "attributes"]
    assert set(METRIC_ROUTES) >= {"telemetry", "other"}


def test_handshake_metrics_have_every_outcome_and_method_and_time_by_method():
    metrics = HandshakeMetrics()
    metrics.record("full", "psk", 0.004)
    metrics.record("resumed", "x509", 0.002)
    metrics.record("failed", "none", 0.5)
    counts, seconds = metrics.families()
    values = {tuple(sorted(s.labels.items())): s.value for s in counts.samples
              if s.name.endswith("_total")}
    assert len(values) == 12 and sum(values.values()) == 3
    assert values[(("method", "psk"), ("outcome", "full"))] == 1
    observed = {s.labels["method"]: s.value for s in seconds.samples
                if s.name.endswith("_count")}
    assert observed == {"psk": 1, "x509": 1, "none": 0}  # a failure has no duration


class FakeStream:
    """A peer class serving several transports (as the RFC 8323 connections' StreamPeer)."""

    credential = None

    def __init__(self, address, scheme):
        self.key = "stream %s %s" % (scheme, address)
        self.address = address
        self.scheme = scheme


def test_a_peer_class_of_several_transports_is_counted_by_its_attribute(tmp_path):
    bridge, clock = rig(tmp_path)
    bridge.requests.counts.register_by(FakeStream, "scheme", {"coap+tcp": "tcp",
                                                              "coap+ws": "ws"})
    for n, scheme in enumerate(("coap+tcp", "coap+ws", "coap+ws", "gopher")):
        send(bridge, clock, POST, "/api/v1/tok0/telemetry", FakeStream(("10.0.0.%d" % n, 9),
                                                                       scheme), b'{"t": 1}')
        clock.advance(1)
    assert series(bridge) == {labels("telemetry", "2.01", "tcp"): 1,
                              labels("telemetry", "2.01", "ws"): 2,
                              labels("telemetry", "2.01", "other"): 1}
