"""/healthz and /readyz on the metrics site: what each answers, and why /readyz says 503."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bridge.settings import Config
from bridge.edge.metrics import MetricsSite
from bridge.glue.bridge import Bridge
from bridge.registry import Registry


def get(site: MetricsSite, path: bytes):
    request = DummyRequest(path.strip(b"/").split(b"/"))
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return request.responseCode or 200, body


def test_healthz_is_200_and_readyz_names_what_is_not_ready():
    site = MetricsSite(lambda: {}, lambda: ["mqtt not connected", "registry not reachable"])
    assert get(site, b"/healthz") == (200, b"ok\n")
    assert get(site, b"/readyz") == (503, b"not ready: mqtt not connected, "
                                          b"registry not reachable\n")


def test_readyz_is_200_when_nothing_is_missing():
    assert get(MetricsSite(lambda: {}, lambda: []), b"/readyz") == (200, b"ready\n")


def test_bridge_is_ready_only_with_coap_mqtt_and_registry(tmp_path):
    bridge = Bridge(Config(), Clock())
    assert bridge.not_ready() == ["coap not listening", "mqtt not connected",
                                  "registry not reachable"]
    registry = Registry(str(tmp_path / "registry.sqlite3"))
    bridge.registry = registry
    bridge.coap_listening = True
    bridge.link.connected = True
    assert bridge.not_ready() == []
    registry.close()  # an unusable registry (a closed connection raises sqlite3.Error)
    assert bridge.not_ready() == ["registry not reachable"]
