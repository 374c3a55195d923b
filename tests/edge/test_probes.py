"""/healthz and /readyz on the metrics site: what each answers, and why /readyz says 503.

Ready while the bridge can accept and store uplinks (CoAP listening, the outbox open,
writable and below its bounds, the registry loaded); a lost MQTT link or shared registry
is reported as degraded and keeps it ready, unless health.ready_requires_mqtt."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from bridge import settings
from bridge.edge import coap as coap_edge
from bridge.edge.metrics import MetricsSite, parse_ready, render_ready
from bridge.edge.outbox import Outbox
from bridge.glue.bridge import Bridge
from bridge.logwriter import format_message
from bridge.registry import Registry


def get(site: MetricsSite, path: bytes):
    request = DummyRequest(path.strip(b"/").split(b"/"))
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return request.responseCode or 200, body


def test_healthz_is_200_and_readyz_names_what_is_missing_and_what_is_degraded():
    site = MetricsSite(lambda: {}, lambda: (["outbox full (10 entries)"],
                                            ["mqtt not connected"]))
    assert get(site, b"/healthz") == (200, b"ok\n")
    assert get(site, b"/readyz") == (503, b"not ready: outbox full (10 entries); "
                                          b"degraded: mqtt not connected\n")


def test_readyz_is_200_when_nothing_is_missing_even_if_degraded():
    assert get(MetricsSite(lambda: {}, lambda: ([], [])), b"/readyz") == (200, b"ready\n")
    assert get(MetricsSite(lambda: {}, lambda: ([], ["mqtt not connected"])), b"/readyz") == \
        (200, b"ready; degraded: mqtt not connected\n")


def test_what_readyz_writes_parses_back():
    for state in (([], [], []), (["a", "b"], [], []), ([], ["c"], ["a note"]),
                  (["a"], ["c", "d"], ["one note", "another"])):
        assert parse_ready(render_ready(*state)[1].decode()) == state


def udp(bridge):
    """Plain CoAP's transport, as its service joins it while its port reads."""
    return coap_edge.create_protocol(lambda incoming: None, bridge.reactor, 0.5, 247)


def ready_bridge(tmp_path, env=None):
    """A bridge of the shipped defaults (``env`` on top), not started."""
    clock = Clock()
    clock.advance(1000)
    config = settings.load(None, dict(env or {}, DATA_DIR=str(tmp_path)))
    return Bridge(config, clock), clock


def test_an_mqtt_outage_is_degraded_not_unready(tmp_path):
    bridge, _ = ready_bridge(tmp_path)
    assert bridge.readiness.check() == (["coap not listening", "outbox not open",
                                         "registry not loaded"], ["mqtt not connected"])
    registry = Registry(str(tmp_path / "registry.sqlite3"))
    bridge.registry_view.attach(registry)
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.transports.join(tuple, udp(bridge))
    assert bridge.readiness.check() == ([], ["mqtt not connected"])  # uplinks are stored
    bridge.link.connected = True
    assert bridge.readiness.check() == ([], [])
    registry.close()  # an unusable registry: the bridge serves its last copy
    assert bridge.readiness.check() == ([], ["registry not reachable"])


def test_health_ready_requires_mqtt_makes_an_outage_unready(tmp_path):
    bridge, _ = ready_bridge(tmp_path, {"HEALTH_READY_REQUIRES_MQTT": "true"})
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.transports.join(tuple, udp(bridge))
    assert bridge.readiness.check() == (["mqtt not connected"], [])
    bridge.link.connected = True
    assert bridge.readiness.check() == ([], [])


def test_a_full_outbox_makes_the_bridge_unready_until_it_drains(tmp_path):
    bridge, clock = ready_bridge(tmp_path, {"OUTBOX_MAX_ENTRIES": "1"})
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.registry.add("Dev A", "tokA", "default")
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.outbox_commit.restore()
    bridge.transports.join(tuple, udp(bridge))
    assert bridge.readiness.check() == ([], ["mqtt not connected"])
    assert bridge.metrics.values()["ready"][2] == 1
    bridge.registry_view.refresh()
    bridge.apply(bridge.core.on_uplinks([(1, "tokA", "telemetry", b'{"t": 1}',
                                          ("10.0.0.1", 5683))], clock.seconds()))
    bridge.commit()  # stored, waiting for the platform: the outbox holds its 1 entry
    assert bridge.readiness.check() == (["outbox full (1 entry)"], ["mqtt not connected"])
    assert bridge.metrics.values()["ready"][2] == 0


def test_a_failed_outbox_write_keeps_it_unready_until_a_write_succeeds(tmp_path):
    from bridge.glue.readiness import OUTBOX_FAILURE_HOLD
    bridge, clock = ready_bridge(tmp_path)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.transports.join(tuple, udp(bridge))
    bridge.link.connected = True
    bridge.outbox_commit.failed = ("database or disk is full", clock.seconds())
    assert bridge.readiness.check()[0] == ["outbox not writable (database or disk is full)"]
    clock.advance(OUTBOX_FAILURE_HOLD)  # nothing tried the disk since: try traffic again
    assert bridge.readiness.check() == ([], [])


def test_each_change_of_readiness_is_logged_once(tmp_path):
    bridge, clock = ready_bridge(tmp_path)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
        bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
        bridge.readiness.watch(clock.seconds())  # CoAP not listening yet
        bridge.transports.join(tuple, udp(bridge))
        for _ in range(3):
            clock.advance(1)
            bridge.readiness.watch(clock.seconds())
        bridge.link.connected = True
        bridge.readiness.watch(clock.seconds(), changed=True)  # at once, as link_up does
        bridge.link.connected = False
        bridge.readiness.watch(clock.seconds(), changed=True)
        for _ in range(3):
            clock.advance(1)
            bridge.readiness.watch(clock.seconds())
        bridge.transports.leave(tuple)  # stopping
        clock.advance(1)
        bridge.readiness.watch(clock.seconds())
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [(e["log_level"].name, format_message(e)) for e in events
             if e.get("log_namespace") == "coapbridge.health"]
    assert lines == [  # nothing while it starts (CoAP not listening yet)
        ("info", "Ready for devices, degraded: mqtt not connected (uplinks are stored and "
                 "answered; health.ready_requires_mqtt is off)"),
        ("info", "Ready for devices again"),
        ("info", "Ready for devices, degraded: mqtt not connected (uplinks are stored and "
                 "answered; health.ready_requires_mqtt is off)"),
        ("warn", "Not ready for devices: coap not listening")]


def test_a_stopping_bridge_is_not_ready_and_says_so_once(tmp_path):
    bridge, clock = ready_bridge(tmp_path)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    bridge.transports.join(tuple, udp(bridge))
    bridge.link.connected = True
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        bridge.readiness.watch(clock.seconds())
        bridge.readiness.stopping()
        bridge.transports.leave(tuple)  # its parts stop one by one: nothing more is said
        clock.advance(1)
        bridge.readiness.watch(clock.seconds(), changed=True)
        bridge.readiness.stopping()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert bridge.readiness.check()[0] == ["stopping", "coap not listening"]
    lines = [format_message(e) for e in events if e.get("log_namespace") == "coapbridge.health"]
    assert lines == ["Ready for devices", "Stopping: not ready for devices"]
