"""The runtime glue between the CoAP edge and the core (no sockets: a Clock as reactor)."""

import pytest
from twisted.internet.task import Clock

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core import codes
from bridge.core.actions import Delete, Device, Entry
from bridge.glue.bridge import Bridge
from coaplayer import incoming
from outboxes import stored


def request(remote=("10.0.0.7", 5683), **fields):
    return incoming(remote, **fields)


def test_a_failing_core_releases_the_requests_slot_for_its_address():
    bridge = Bridge(startup_checks.load(None, {}), Clock())

    def broken(request, now):
        raise RuntimeError("bug")
    bridge.core.on_request = broken
    message = request(code=codes.GET)  # not a plain uplink: handled at once
    with pytest.raises(RuntimeError):  # the engine answers 5.00 (tested there)
        bridge.handle_coap(message)
    assert bridge.requests.admission.by_peer == {} and bridge.requests.in_progress == {}


def test_plain_uplinks_wait_for_the_end_of_the_turn_and_a_failing_core_answers_them_5_00():
    from twisted.logger import globalLogPublisher
    clock = Clock()
    bridge = Bridge(startup_checks.load(None, {}), clock)
    seen = []

    def broken(uplinks, now):
        seen.append([u[:3] for u in uplinks])
        raise RuntimeError("bug")
    bridge.core.on_uplinks = broken
    answers = [bridge.handle_coap(request()), bridge.handle_coap(request(("10.0.0.8", 9)))]
    assert seen == [] and not any(d.called for d in answers)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert seen == [[(1, "tok", "telemetry"), (2, "tok", "telemetry")]]
    assert [d.result.message.code for d in answers] == [codes.INTERNAL_SERVER_ERROR] * 2
    assert bridge.requests.admission.by_peer == {} and bridge.requests.in_progress == {}
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["count"] == 2
    for event in failures:
        event["log_failure"].trap(RuntimeError)  # logged once; keep trial/pytest quiet


def get(remote):
    return request(remote, code=codes.GET)  # not a plain uplink: handled at once


def test_requests_in_progress_per_source_endpoint_are_bounded():
    cfg = startup_checks.load_text("limits: {max_pending_per_peer: 2}", {})
    bridge = Bridge(cfg, Clock())
    bridge.core.on_request = lambda request, now: []  # never answered
    bridge.handle_coap(get(("10.0.0.7", 5683)))
    bridge.handle_coap(get(("10.0.0.7", 5683)))
    refused = bridge.handle_coap(get(("10.0.0.7", 5683)))
    assert refused.result.message.code == codes.SERVICE_UNAVAILABLE
    assert refused.result.message.payload == b"too many requests in progress from this address and port"
    assert not bridge.handle_coap(get(("10.0.0.8", 5683))).called  # another address
    # another port of the same address: another device behind the same carrier NAT
    assert not bridge.handle_coap(get(("10.0.0.7", 5684))).called


def test_a_request_refused_before_the_core_releases_its_slot():
    # a Uri-Path that is not UTF-8 is answered 4.00 by the glue itself: with one request
    # in progress allowed, the next one from the same endpoint is still served
    cfg = startup_checks.load_text("limits: {max_pending_per_peer: 1}", {})
    bridge = Bridge(cfg, Clock())
    bad = [bridge.handle_coap(request(code=codes.GET, path=(b"api", b"\xff"))) for _ in "ab"]
    assert [d.result.message.code for d in bad] == [codes.BAD_REQUEST] * 2
    assert bridge.requests.admission.by_peer == {} and bridge.requests.in_progress == {}


def test_many_devices_behind_one_address_are_served_up_to_the_per_address_bound():
    # 70 requests pending from 70 ports of one address (the platform is slow): the default
    # per-endpoint bound (64) must not refuse the 71st device's uplink
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    bridge.core.on_request = lambda request, now: []  # never answered
    assert not any(bridge.handle_coap(get(("10.0.0.7", 40000 + n))).called for n in range(70))
    assert not bridge.handle_coap(request(("10.0.0.7", 39999))).called  # waits for its turn
    cfg = startup_checks.load_text("limits: {max_pending_per_address: 3}", {})
    bounded = Bridge(cfg, Clock())
    bounded.core.on_request = lambda request, now: []
    assert not any(bounded.handle_coap(get(("10.0.0.7", 40000 + n))).called for n in range(3))
    refused = bounded.handle_coap(get(("10.0.0.7", 40003)))
    assert refused.result.message.code == codes.SERVICE_UNAVAILABLE
    assert refused.result.message.payload == b"too many requests in progress from this address"
    assert not bounded.handle_coap(get(("10.0.0.8", 40000))).called
    assert bounded.requests.admission.by_address == {"10.0.0.7": 3, "10.0.0.8": 1}


def test_the_registry_file_is_read_once_per_reactor_turn(tmp_path):
    from bridge.registry import Registry
    clock = Clock()
    bridge = Bridge(startup_checks.load(None, {}), clock)
    path = str(tmp_path / "registry.sqlite3")
    writer = Registry(path)
    writer.add("Dev A", "tokA", "thermo")
    bridge.registry_view.attach(Registry(path))
    queries = []
    bridge.registry._db.set_trace_callback(queries.append)
    lookup = bridge.core.auth.lookup  # what the core reads: plain data, no query
    view = bridge.registry_view
    view.refresh()
    assert lookup("tokA") is not None
    view.refresh()  # the same turn: no second look at the file
    assert lookup("tokA") is not None and sum("data_version" in q for q in queries) == 1
    writer.remove("Dev A")
    view.refresh()
    assert lookup("tokA") is not None  # a removal during the turn counts from the next
    clock.advance(0)
    view.refresh()
    assert lookup("tokA") is None  # the next turn reads the file again
    assert sum("data_version" in q for q in queries) == 2
    queries.clear()
    assert lookup("tokA") is None and queries == []  # the core's lookups never query


def test_the_bridges_own_registry_write_counts_within_the_same_turn(tmp_path):
    # A device that got its provisioning answer can post its new token before the port's
    # read loop (one reactor turn) ends: the bridge's own write must not wait for the turn.
    from bridge.registry import Registry
    clock = Clock()
    bridge = Bridge(startup_checks.load(None, {}), clock)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    lookup, view = bridge.core.auth.lookup, bridge.registry_view
    view.refresh()
    assert lookup("tokP") is None
    done = []
    view.write("add", "Dev P", "tokP", "thermo").addCallback(done.append)
    view.refresh()  # the same turn
    assert done and lookup("tokP") == Device("Dev P", "thermo")


def test_a_uri_path_that_is_not_utf8_gets_4_00():
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    message = request(path=(b"api", b"v1", b"\xff\xfe", b"telemetry"))
    answer = bridge.handle_coap(message)
    assert answer.result.message.code == codes.BAD_REQUEST and bridge.requests.in_progress == {}


# -- the outbox: one transaction per reactor turn ------------------------------------------

class CountingWrites:
    """Wraps ``Outbox.write``: counts the calls and fails the next one when told to."""

    def __init__(self, outbox):
        self.write, self.calls, self.fail = outbox.write, [], None
        outbox.write = self

    def __call__(self, rows, deletes, dead, now):
        self.calls.append((list(rows), list(deletes), list(dead)))
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return self.write(rows, deletes, dead, now)


def writing_bridge(tmp_path):
    from bridge.edge.outbox import Outbox
    from bridge.registry import Registry
    clock = Clock()
    bridge = Bridge(startup_checks.load_text("limits: {device_rate: 0, peer_rate: 0}", {}), clock)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.registry.add("Dev A", "tok", "thermo")
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    return bridge, clock, CountingWrites(bridge.outbox)


def uplink(bridge, mid):
    return bridge.handle_coap(request(mid=mid, payload=b'{"n": %d}' % mid))


def test_uplinks_of_one_turn_are_written_in_one_transaction_then_answered(tmp_path):
    bridge, clock, writes = writing_bridge(tmp_path)
    answers = [uplink(bridge, mid) for mid in (1, 2, 3)]
    assert not any(d.called for d in answers) and writes.calls == []
    clock.advance(0)
    assert len(writes.calls) == 1 and len(writes.calls[0][0]) == 3
    assert [d.result.message.code for d in answers] == [codes.CREATED] * 3
    assert bridge.outbox.stats()[0] == 3
    assert bridge.metrics.values()["outbox_commits_total"][2] == 1
    later = uplink(bridge, 4)
    bridge.commit()  # called directly (as at shutdown): nothing is left for a later call
    assert later.result.message.code == codes.CREATED
    assert [c for c in clock.getDelayedCalls() if c.func == bridge.outbox_commit.commit] == []
    assert bridge.metrics.values()["outbox_commits_total"][2] == 2


def test_a_failed_write_answers_5_03_and_the_next_write_goes_ahead(tmp_path):
    import sqlite3
    bridge, clock, writes = writing_bridge(tmp_path)
    writes.fail = sqlite3.OperationalError("disk I/O error")
    failed = uplink(bridge, 1)
    clock.advance(0)
    assert failed.result.message.code == codes.SERVICE_UNAVAILABLE
    assert bridge.metrics.values()["outbox_commits_total"][2] == 0  # only what was written counts
    again = uplink(bridge, 2)
    clock.advance(0)
    assert again.result.message.code == codes.CREATED and bridge.outbox.stats()[0] == 1


def test_removals_of_a_failed_write_go_with_the_next_one(tmp_path):
    import sqlite3
    bridge, clock, writes = writing_bridge(tmp_path)
    [entry_id] = bridge.outbox.append([Entry(0, "Dev A", "thermo", "v1/gateway/telemetry", b"{}", 1.0)])
    bridge.outbox_commit.delete(Delete((entry_id,)))
    writes.fail = sqlite3.OperationalError("database is locked")
    bridge.commit()
    assert bridge.outbox.stats()[0] == 1  # still there: kept for the next write
    uplink(bridge, 1)
    clock.advance(0)
    assert writes.calls[-1][1] == [entry_id] and len(writes.calls[-1][0]) == 1
    assert [e.device for e in stored(bridge.outbox)] == ["Dev A"] and bridge.outbox.stats()[0] == 1


def test_uplinks_in_bulk_and_one_at_a_time_are_stored_in_the_order_they_came(tmp_path):
    bridge, clock, writes = writing_bridge(tmp_path)
    claim = request(path=(b"api", b"v1", b"tok", b"claim"),  # handled at once, not in bulk
                    payload=b'{"secretKey": "s", "durationMs": 1000}')
    answers = [uplink(bridge, 1), bridge.handle_coap(claim), uplink(bridge, 2)]
    clock.advance(0)
    assert [d.result.message.code for d in answers] == [codes.CREATED] * 3
    [(rows, _, _)] = writes.calls
    assert [e.topic for e in rows] == ["v1/gateway/telemetry", "v1/gateway/claim",
                                       "v1/gateway/telemetry"]
    assert [(e.topic, e.payload) for e in stored(bridge.outbox)] == [(e.topic, e.payload)
                                                                    for e in rows]


def test_an_uplink_being_written_at_a_rename_is_stored_and_kept_under_the_new_name(tmp_path):
    import json
    bridge, clock, writes = writing_bridge(tmp_path)
    claim = request(path=(b"api", b"v1", b"tok", b"claim"),  # handled at once: a Store
                    payload=b'{"secretKey": "s", "durationMs": 1000}')
    answer = bridge.handle_coap(claim)
    [store] = bridge.outbox_commit._stores  # emitted, not written yet
    rpc = {"method": "gateway_device_renamed", "params": {"Dev A": "Kitchen"}}
    bridge.message("v1/devices/me/rpc/request/1", json.dumps(rpc).encode())
    clock.advance(0)
    assert answer.result.message.code == codes.CREATED
    assert store.entry.device == "Dev A"  # the core's actions are values: never changed
    [entry] = stored(bridge.outbox)  # written, then renamed in the outbox
    assert entry.device == "Kitchen" and list(json.loads(entry.payload)) == ["Kitchen"]
    [queued] = bridge.core.outbox.delivery.queues["Kitchen"]  # the core's own copy
    assert (queued.id, queued.device, queued.payload) == (entry.id, "Kitchen", entry.payload)


def test_an_answer_in_bulk_to_a_valid_token_is_not_limited_by_the_amplification_rule(tmp_path):
    bridge, clock, writes = writing_bridge(tmp_path)
    bad = request(payload=b"{")  # 4.00 with a diagnostic text many times the request's size
    answer = bridge.handle_coap(bad)
    clock.advance(0)
    assert answer.result.message.code == codes.BAD_REQUEST
    assert getattr(answer.result, "authenticated", False) is True


def test_an_answer_to_a_request_with_a_valid_token_is_not_limited_by_the_amplification_rule(
        tmp_path):
    bridge, clock, writes = writing_bridge(tmp_path)
    # not plain uplinks (GET): through on_request (4.00, 4.01)
    bad = request(code=codes.GET, payload=b"{")
    unknown = request(code=codes.GET, path=(b"api", b"v1", b"nope", b"telemetry"))
    answers = [bridge.handle_coap(bad), bridge.handle_coap(unknown)]
    clock.advance(0)
    assert [(a.result.message.code, a.result.authenticated) for a in answers] == [
        (codes.BAD_REQUEST, True), (codes.UNAUTHORIZED, False)]
    assert bridge.requests.in_progress == {} and bridge.requests.authenticated_refs == set()


def test_metrics_count_server_rpcs_dropped_and_expired():
    bridge = Bridge(startup_checks.load_text("platform: {rpc_queue_size: 1}", {}), Clock())
    rpc = b'{"device": "Dev A", "data": {"id": %d, "method": "m"}}'
    bridge.message("v1/gateway/rpc", rpc % 1)
    bridge.message("v1/gateway/rpc", rpc % 2)
    bridge.reactor.advance(bridge.config.platform.rpc_queue_ttl)
    bridge.tick()
    metrics = bridge.metrics.values()
    assert (metrics["rpc_dropped_total"][2], metrics["rpc_expired_total"][2]) == (1, 1)


def logged(clock):
    """Run the reactor turn; the events logged meanwhile."""
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def test_a_deeply_nested_uplink_gets_4_00_and_the_others_of_its_turn_2_01(tmp_path):
    bridge, clock, writes = writing_bridge(tmp_path)
    deep = request(payload=b'{"v": ' + b"[" * 1200 + b"]" * 1200 + b"}")
    answers = [uplink(bridge, 1), bridge.handle_coap(deep), uplink(bridge, 2)]
    events = logged(clock)
    assert [d.result.message.code for d in answers] == [codes.CREATED, codes.BAD_REQUEST,
                                                codes.CREATED]
    assert b"nested deeper than 32 levels" in answers[1].result.message.payload
    assert [e for e in events if e.get("log_failure") is not None] == []
    assert bridge.outbox.stats()[0] == 2


def test_a_bug_in_one_uplink_answers_it_5_00_and_logs_one_traceback_at_error_level(tmp_path):
    from twisted.logger import LogLevel, formatEvent
    bridge, clock, writes = writing_bridge(tmp_path)
    lookup = bridge.core.auth.lookup

    def buggy(token):
        if token == "bug":
            raise RuntimeError("bug")
        return lookup(token)
    bridge.core.auth.lookup = buggy
    bad = request(path=(b"api", b"v1", b"bug", b"telemetry"))
    answers = [uplink(bridge, 1), bridge.handle_coap(bad), uplink(bridge, 2)]
    events = logged(clock)
    assert [d.result.message.code for d in answers] == [codes.CREATED, codes.INTERNAL_SERVER_ERROR,
                                                codes.CREATED]
    [failure] = [e for e in events if e.get("log_failure") is not None]
    assert failure["log_level"] == LogLevel.error and "uplink 2 failed" in formatEvent(failure)
    failure["log_failure"].trap(RuntimeError)  # its traceback is logged; keep pytest quiet
    assert bridge.requests.admission.by_peer == {} and bridge.requests.in_progress == {}


def test_a_log_action_from_the_core_is_logged_with_its_format_and_fields():
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    from bridge.core.actions import Log
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        bridge.apply([Log("warn", "outbox entry {id} of {device} set aside: {reason}",
                          {"id": 8, "device": "Dev A", "reason": "refused"})])
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("device") == "Dev A"]
    assert event["log_level"] == LogLevel.warn and (event["id"], event["reason"]) == (8, "refused")
    assert event["log_format"] == "outbox entry {id} of {device} set aside: {reason}"
    assert formatEvent(event) == "outbox entry 8 of Dev A set aside: refused"


def test_a_package_that_fails_to_be_served_answers_5_00_and_is_logged():
    from twisted.internet import defer
    from bridge.core.actions import ServePackage
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    bridge.core.on_request = lambda request, now: [ServePackage(request.ref, "Dev A", "tok", None)]
    bridge.packages.serve = lambda action: defer.fail(OSError("disk gone"))
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        answer = bridge.handle_coap(get(("10.0.0.7", 5683)))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer.result.message.code == codes.INTERNAL_SERVER_ERROR
    [failure] = [e for e in events if e.get("log_failure") is not None]
    failure["log_failure"].trap(OSError)
    assert bridge.requests.in_progress == {}


def test_draining_ends_even_when_looking_at_the_publishes_fails():
    clock = Clock()
    bridge = Bridge(startup_checks.load(None, {}), clock)
    bridge.commit = lambda: (_ for _ in ()).throw(RuntimeError("bug"))
    bridge.core.outbox.delivery.in_flight.clear()
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        done = bridge.drain(timeout=1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert done.called  # stopping goes on
    [failure] = [e for e in events if e.get("log_failure") is not None]
    failure["log_failure"].trap(RuntimeError)


def test_a_transport_that_hands_in_respond_gets_every_answer_through_it():
    # what the UDP edge does (callback_handler): no Deferred per request
    clock = Clock()
    bridge = Bridge(startup_checks.load(None, {}), clock)
    answers = []

    def respond(answer, arg):
        answers.append((arg, answer.message.code, answer.authenticated))
    uplink, read = request(), request(("10.0.0.8", 9), code=codes.GET)
    assert bridge.requests.handle(uplink, respond) is None
    assert answers == []  # kept for the end of the turn
    # the core answers a read at once, after the uplink kept before it (unknown tokens)
    assert bridge.requests.handle(read, respond) is None
    assert answers == [(uplink, codes.UNAUTHORIZED, False), (read, codes.UNAUTHORIZED, False)]
    assert bridge.requests.in_progress == {} and bridge.requests.admission.by_peer == {}
    busy = startup_checks.load_text("limits: {max_pending_per_peer: 1}", {})
    bridge = Bridge(busy, clock)
    bridge.core.on_request = lambda request, now: []  # never answered
    bridge.requests.handle(read, respond)
    bridge.requests.handle(read, respond)
    assert answers[-1] == (read, codes.SERVICE_UNAVAILABLE, False)


def test_a_request_that_waited_for_a_registration_and_then_failed_is_answered_5_00():
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher
    from bridge.core.auth import Certificate

    class Session:
        key = ("dtls", ("10.0.0.9", 4000))
        address = ("10.0.0.9", 4000)
        credential = Certificate("b" * 64, cn="Cam 7")
    bridge = Bridge(startup_checks.load(None, {}), Clock())
    waiter = defer.Deferred()
    bridge.requests.register = lambda credential: waiter

    def broken(request, now):
        raise RuntimeError("bug")
    bridge.core.on_request = broken
    answers, events = [], []
    globalLogPublisher.addObserver(events.append)
    try:
        bridge.requests.handle(request(Session(), code=codes.GET),
                               lambda answer, arg: answers.append(answer.message.code))
        assert answers == []
        waiter.callback(None)  # registered: the request goes on, and the core fails
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answers == [codes.INTERNAL_SERVER_ERROR]
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    failures[0]["log_failure"].trap(RuntimeError)
    assert bridge.requests.admission.by_peer == {} and bridge.requests.in_progress == {}


def test_notifications_go_to_the_transport_of_their_peer():
    # plain CoAP's peers are (host, port) tuples, CoAPs' DtlsPeers: each its own layer
    from bridge.core.actions import Notify
    from bridge.dtls.events import DtlsPeer
    from bridge.glue.notifications import Notifications
    from bridge.glue.transports import Transports

    class Transport:
        def __init__(self):
            self.sent = []

        def notify(self, ref, remote, *args):
            self.sent.append((ref, remote))

    clock = Clock()
    transports = Transports()
    notifications = Notifications(clock, transports, lambda ref, outcome: None)
    udp, dtls = Transport(), Transport()
    transports.join(tuple, udp)
    transports.join(DtlsPeer, dtls)
    session = DtlsPeer(("10.0.0.1", 4000), 1)
    for ref, remote in ((1, ("10.0.0.1", 5683)), (2, session), (3, ("10.0.0.2", 5683))):
        notifications.queue(Notify(ref, remote, b"t", codes.CONTENT, b"{}", 2))
    clock.advance(0)
    assert udp.sent == [(1, ("10.0.0.1", 5683)), (3, ("10.0.0.2", 5683))]
    assert dtls.sent == [(2, session)]
    transports.leave(DtlsPeer)  # CoAPs stopped listening: its sessions get nothing
    notifications.queue(Notify(4, session, b"t", codes.CONTENT, b"{}", 3))
    notifications.queue(Notify(5, ("10.0.0.1", 5683), b"t", codes.CONTENT, b"{}", 3))
    clock.advance(0)
    assert dtls.sent == [(2, session)] and udp.sent[-1] == (5, ("10.0.0.1", 5683))
