"""The service tree's order, the action table, and the short MQTT sessions (no sockets)."""

import dataclasses

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core import actions
from bridge.edge.short_session import SessionFailed, ShortSession, ShortSessions
from bridge.service import BridgeService


def test_children_start_files_first_and_coap_last():
    service = BridgeService(startup_checks.load(None, {}), Clock())
    assert [type(child).__name__ for child in service] == [
        "_DataDirService", "_RegistryService", "_OutboxService", "_PackageService",
        "_MqttService", "_TickService", "_MetricsService", "CoapService"]
    worker = BridgeService(config_module.load(None, {"COAP_WORKERS": "2"}), Clock(), worker=1)
    assert type(list(worker)[0]).__name__ == "_RegistryService"  # under its supervisor's lock


class Recording(Service):
    def __init__(self, name, stops, waits):
        self.name, self.stops, self.waits = name, stops, waits

    def stopService(self):
        Service.stopService(self)
        self.stops.append(self.name)
        return self.waits.get(self.name)


def test_each_child_stops_after_the_one_after_it_has_stopped():
    service = BridgeService(startup_checks.load(None, {}), Clock())
    for child in list(service):
        service.removeService(child)
    stops, later = [], defer.Deferred()
    for name in ("files", "mqtt", "coap"):
        Recording(name, stops, {"coap": later}).setServiceParent(service)
    service.running = 1
    finished = []
    service.stopService().addCallback(finished.append)
    assert stops == ["coap"] and finished == []  # the outbox stays open meanwhile
    later.callback(None)
    assert stops == ["coap", "mqtt", "files"] and finished == [None]


def test_every_core_action_has_a_handler():
    from bridge.glue.bridge import Bridge
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    values = [value for value in vars(actions).values() if isinstance(value, type)
              and value.__module__ == actions.__name__]  # not what actions.py imports
    kinds = [value for value in values
             if (dataclasses.is_dataclass(value) or issubclass(value, tuple))
             and value not in (actions.Request, actions.Device, actions.PowerSettings,
                               actions.Entry)]
    assert {actions.Reply, actions.Store, actions.Log} <= set(kinds)  # both kinds of class
    assert set(kinds) <= set(bridge.dispatcher._handlers)


class FakeLink:
    def __init__(self):
        self.started = self.stopped = 0

    def start(self):
        self.started += 1

    def stop(self):
        self.stopped += 1
        return defer.succeed(None)


def session(clock, timeout=5.0):
    cfg = startup_checks.load(None, {}).mqtt
    one = ShortSession(clock, cfg, "user", "test", ["t"], timeout, "too slow")
    one.link = FakeLink()
    return one


def test_a_short_session_ends_once_at_its_deadline_and_cancels_nothing_left():
    clock = Clock()
    one = session(clock)
    failures = []
    one.start().addErrback(failures.append)
    clock.advance(5.0)
    [failure] = failures
    assert failure.check(SessionFailed) and failure.value.reason == "too slow"
    one.succeed("late")  # ended already: nothing more
    assert one.link.stopped == 1 and clock.getDelayedCalls() == []


def test_stopping_the_sessions_ends_each_open_one_and_its_timer():
    clock = Clock()
    sessions = ShortSessions()
    results = []
    opened = [session(clock) for _ in range(2)]
    for one in opened:
        one.start(sessions).addErrback(lambda f: results.append(f.value.reason))
    done = session(clock)
    done.start(sessions).addCallback(results.append)
    done.succeed("answer")
    assert len(sessions) == 2
    sessions.stop()
    assert results == ["answer", "the bridge is stopping", "the bridge is stopping"]
    assert len(sessions) == 0 and clock.getDelayedCalls() == []


def test_stopping_dtls_answers_the_stored_uplinks_before_closing_the_sessions():
    from bridge.dtls.events import DtlsPeer
    from bridge.edge.intake import Intake
    from bridge.listeners import DtlsService
    calls = []

    class View:
        on_change = []

    class Transports:
        def leave(self, peer_type):
            calls.append(("leave", peer_type))  # no notification for its sessions any more

    class Port:
        def stopReading(self):
            calls.append("stopReading")

        def stopListening(self):
            calls.append("stopListening")

    class Transport:
        def close_all(self):
            calls.append("close_all")

    def commit():
        calls.append("commit")  # answers every stored uplink, DTLS peers' too

    intake = Intake(Clock(), None, None, None, None, Transports(), commit, View(), None, False)
    service = DtlsService(intake, startup_checks.load(None, {}), lambda peer: False,
                          lambda *outcome: None)
    service.port, service.transport, service.running = Port(), Transport(), 1
    service.stopService()
    assert calls == ["stopReading", "commit", ("leave", DtlsPeer), "close_all",
                     "stopListening"]
