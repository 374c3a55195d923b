"""Tests of the pure gateway session core (bridge.core.session.GatewayCore): uplinks.

An uplink becomes a ``Store`` action; the tests play the outbox by answering it with
``on_stored`` (``store_all``) and the broker by answering each ``Publish`` with
``on_published``.
"""

import itertools
import json

import pytest

from bridge.core import codes, gateway
from bridge.core.actions import (DeadLetter, Delete, Device, Log, Publish, Reply, Request,
                                 ResetLink, Store)
from bridge.core.delivery import Entry
from bridge.core.session import GatewayCore
from bridge.core.parts import RETRY_AFTER
from coreconfig import core_config, handled
from logtext import text

NOW = 1_700_000_000.5
DEV_A = Device("Dev A", "thermo")
DEV_B = Device("Dev B", "meter")
TELEMETRY = b'{"t": 21.5}'

CONNECT = "v1/gateway/connect"
TELEMETRY_TOPIC = "v1/gateway/telemetry"


def make_core(devices=None, **settings):
    devices = {"tok": DEV_A} if devices is None else devices
    options = dict(puback_timeout=10, idle_timeout=600)
    options.update(settings)
    return GatewayCore(core_config(**options), lambda token: devices.get(token))


def req(ref, feature="telemetry", payload=TELEMETRY, token="tok", method=codes.POST):
    return Request(ref, method, ("api", "v1", token, feature), payload)


def dotted(action):
    assert isinstance(action, Reply), action
    return codes.dotted(action.code)


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def publishes(actions):
    return of(actions, Publish)


def replies(actions):
    return of(actions, Reply)


def values(publish):
    """The values of a gateway telemetry message from Dev A."""
    return json.loads(publish.payload)["Dev A"][0]["values"]


_outbox_ids = itertools.count(1000)


def store_all(core, actions, now=NOW, ids=None):
    """Play the outbox: write every Store in ``actions`` (with ``ids`` or the next free ids, in
    order) and report them with ``on_stored``. Returns the core's answer."""
    stores = of(actions, Store)
    assert stores, actions
    ids = [next(_outbox_ids) for _ in stores] if ids is None else ids
    return core.on_stored([(s.ref, i) for s, i in zip(stores, ids)], now)


def deliver(core, actions, now=NOW):
    """Play the outbox and a broker that acknowledges everything, until nothing is left to do.
    Returns every action seen, in order."""
    seen = []
    todo = list(actions)
    while todo:
        action = todo.pop(0)
        seen.append(action)
        if isinstance(action, Publish):
            todo += core.on_published(action.ref, 0, now)
        elif isinstance(action, Store):
            todo += store_all(core, [action], now)
    return seen


def uplink(core, ref, payload=TELEMETRY, token="tok", now=NOW, entry_id=None):
    """A telemetry uplink written to the outbox; returns what the core answers on_stored."""
    [store] = handled(core, req(ref, payload=payload, token=token), now)
    return store_all(core, [store], now, None if entry_id is None else [entry_id])


def connected_core(now=NOW, **settings):
    """A core with the link up and Dev A already connected upstream (one uplink delivered)."""
    core = make_core(**settings)
    core.on_link_up(now)
    reply, connect = uplink(core, 900, now=now)
    assert reply == Reply(900, codes.CREATED) and connect.topic == CONNECT
    [data] = core.on_published(connect.ref, 0, now)
    assert of(core.on_published(data.ref, 0, now), Delete)
    return core


# -- authentication and acceptance ----------------------------------------------------

def test_unknown_token_gets_4_01():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = handled(core, req(1, token="nope"), NOW)
    assert reply.ref == 1
    assert dotted(reply) == "4.01"
    assert "nope" not in reply.reason and b"nope" not in reply.payload


def test_certificate_form_without_token_gets_4_01():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = handled(core, Request(1, codes.POST, ("api", "v1", "telemetry"), TELEMETRY), NOW)
    assert dotted(reply) == "4.01"


def test_unknown_token_gets_4_01_even_when_link_is_down():
    [reply] = make_core().on_request(req(1, token="nope"), NOW)
    assert dotted(reply) == "4.01"


def test_unknown_token_is_not_stored():
    core = make_core()
    core.on_link_up(NOW)
    assert of(handled(core, req(1, token="nope"), NOW), Store) == []


def test_routing_error_gets_its_code_and_text_diagnostic():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = handled(core, req(1, feature="bogus"), NOW)
    assert dotted(reply) == "4.00"
    assert reply.content_format == codes.TEXT_PLAIN
    assert reply.payload == reply.reason.encode("utf-8") and reply.payload


# -- storing: 2.01 only once the uplink is written ------------------------------------

def test_uplink_is_stored_with_device_topic_and_gateway_payload_before_any_reply():
    core = make_core()
    core.on_link_up(NOW)
    [store] = handled(core, req(1), NOW)
    assert isinstance(store, Store)
    assert (store.entry.device, store.entry.device_type, store.entry.topic) == ("Dev A", "thermo", TELEMETRY_TOPIC)
    assert json.loads(store.entry.payload) == {"Dev A": [{"ts": int(NOW * 1000), "values": {"t": 21.5}}]}


def test_device_gets_2_01_when_on_stored_reports_the_write():
    core = make_core()
    core.on_link_up(NOW)
    [store] = handled(core, req(1), NOW)
    answer = core.on_stored([(store.ref, 7)], NOW)
    assert replies(answer) == [Reply(1, codes.CREATED)]


def test_uplink_while_link_down_is_stored_and_acknowledged_without_publish():
    core = make_core()  # link never came up
    [store] = handled(core, req(1), NOW)
    assert isinstance(store, Store)
    assert store_all(core, [store]) == [Reply(1, codes.CREATED)]


def test_uplinks_written_in_one_group_are_answered_in_order():
    core = make_core()
    stores = handled(core, req(1), NOW) + handled(core, req(2), NOW)
    assert replies(store_all(core, stores)) == [Reply(1, codes.CREATED), Reply(2, codes.CREATED)]


def test_store_failure_answers_5_03_with_max_age_and_logs_the_reason():
    core = make_core()
    core.on_link_up(NOW)
    [store] = handled(core, req(1), NOW)
    log, reply = core.on_store_failed([store.ref], "disk I/O error", NOW)
    assert isinstance(log, Log) and log.level == "error" and "disk I/O error" in text(log)
    assert (reply.ref, dotted(reply), reply.max_age) == (1, "5.03", RETRY_AFTER)


def test_a_disk_that_stays_full_is_named_at_once_then_once_a_minute_then_its_recovery():
    core = make_core()
    core.on_link_up(NOW)
    full = "database or disk is full"

    def fail(ref, now, reason=full):
        [store] = handled(core, req(ref), now)
        return of(core.on_store_failed([store.ref], reason, now), Log)

    [first] = fail(1, NOW)
    assert first.level == "error" and full in text(first)
    for n in range(2, 12):  # ten more failed turns inside the minute: no line each
        assert fail(n, NOW + n) == []
    [again] = fail(20, NOW + 61)  # the operator reads it again while the disk stays full
    assert again.level == "error" and full in text(again) and "11" in text(again)
    [other] = fail(21, NOW + 62, "disk I/O error")  # another cause: said at once
    assert "disk I/O error" in text(other)
    [store] = handled(core, req(22), NOW + 63)
    actions = core.on_stored([(store.ref, 1)], NOW + 63)
    [back] = of(actions, Log)
    assert back.level == "info" and "written again" in text(back) and "13" in text(back)
    assert [dotted(r) for r in replies(actions)] == ["2.01"]
    [fresh] = fail(23, NOW + 64)  # a new spell starts with its own first line
    assert full in text(fresh)


def test_a_full_disk_failing_a_removal_and_then_a_store_is_one_spell_logged_once():
    """A write of removals alone (a PUBACK's Delete) failing first, then the stores: one
    condition, so one line at once and one when it ends (it was a line for each)."""
    core = make_core()
    core.on_link_up(NOW)
    full = "database or disk is full"
    [first] = of(core.on_update_failed(full, NOW), Log)
    assert first.level == "error" and full in text(first)
    assert core.on_update_failed(full, NOW + 1) == []
    [store] = handled(core, req(1), NOW + 2)
    actions = core.on_store_failed([store.ref], full, NOW + 2)
    assert of(actions, Log) == [] and [dotted(r) for r in replies(actions)] == ["5.03"]
    [back] = of(core.on_updated(NOW + 3), Log)  # the removals written at last
    assert back.level == "info" and "written again" in text(back) and "1" in text(back)
    assert core.on_updated(NOW + 4) == []  # a removal written outside a spell says nothing


def test_failed_store_is_never_published_and_frees_its_place_in_the_outbox():
    [probe] = handled(make_core(), req(1), NOW)
    for bound in (dict(outbox_max_entries=1), dict(outbox_max_bytes=len(probe.entry.payload))):
        core = make_core(**bound)
        core.on_link_up(NOW)
        [store] = handled(core, req(1), NOW)
        core.on_store_failed([store.ref], "disk I/O error", NOW)
        assert core.on_tick(NOW + 1) == []  # nothing to deliver, no connect
        [again] = handled(core, req(2), NOW + 1)  # the bound has room again
        assert isinstance(again, Store), bound


# -- delivery: connect first, then the stored data ------------------------------------

def test_first_uplink_publishes_connect_then_stored_data_after_connect_puback():
    core = make_core()
    assert core.on_link_up(NOW) == []

    [store] = handled(core, req(1), NOW)
    reply, connect = store_all(core, [store], ids=[7])
    assert reply == Reply(1, codes.CREATED)
    assert isinstance(connect, Publish)
    assert connect.topic == CONNECT
    assert connect.payload == b'{"device":"Dev A","type":"thermo"}'
    assert connect.device == "Dev A"

    [data] = core.on_published(connect.ref, 0, NOW)
    assert isinstance(data, Publish)
    assert (data.topic, data.payload, data.device) == (TELEMETRY_TOPIC, store.entry.payload, "Dev A")
    assert data.ref != connect.ref

    assert core.on_published(data.ref, 0, NOW) == [Delete((7,))]


def test_connected_device_publishes_stored_data_right_after_2_01():
    core = connected_core()
    reply, data = uplink(core, 2, now=NOW + 1, entry_id=8)
    assert reply == Reply(2, codes.CREATED)
    assert isinstance(data, Publish) and data.topic == TELEMETRY_TOPIC
    assert core.on_published(data.ref, 0, NOW + 1) == [Delete((8,))]


def test_uplinks_stored_while_connect_pending_wait_for_it_and_keep_their_order():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1, payload=b'{"n": 1}')
    # no second connect, no data yet
    assert uplink(core, 2, payload=b'{"n": 2}') == [Reply(2, codes.CREATED)]

    first, second = core.on_published(connect.ref, 0, NOW)
    assert [values(p) for p in (first, second)] == [{"n": 1}, {"n": 2}]


def test_puback_for_unknown_ref_is_ignored():
    core = connected_core()
    assert core.on_published(12345, 0, NOW) == []


def test_each_entry_is_deleted_once():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    assert core.on_published(data.ref, 0, NOW) == [Delete((8,))]
    assert core.on_published(data.ref, 0, NOW) == []


def test_puback_reason_below_0x80_is_success():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    assert core.on_published(data.ref, 0x10, NOW) == [Delete((8,))]  # no matching subscribers


@pytest.mark.parametrize("reason_code", [0x80, 0x87, 0x99],
                         ids=["unspecified_0x80", "not_authorized_0x87", "payload_0x99"])
def test_mqtt5_puback_refusal_sets_the_entry_aside_as_dead_letter(reason_code):
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    actions = core.on_published(data.ref, reason_code, NOW)
    [dead] = of(actions, DeadLetter)
    assert dead.id == 8 and "0x%02x" % reason_code in dead.reason
    [log] = of(actions, Log)
    assert log.level == "warn" and log.fields["device"] == "Dev A"
    assert text(log) == "outbox entry 8 of Dev A set aside: platform refused it with PUBACK " \
        "reason 0x%02x" % reason_code
    assert replies(actions) == [] and of(actions, Delete) == []


def test_dead_letter_does_not_hold_back_the_devices_next_entry():
    core = connected_core(window=1)
    _, first = uplink(core, 2, payload=b'{"n": 1}', entry_id=8)
    assert uplink(core, 3, payload=b'{"n": 2}') == [Reply(3, codes.CREATED)]  # window full
    [_, _, second] = core.on_published(first.ref, 0x99, NOW)
    assert values(second) == {"n": 2}


def test_quota_refusal_requeues_the_entry_ahead_of_the_devices_later_entries():
    core = connected_core(window=1)
    _, first = uplink(core, 2, payload=b'{"n": 1}', entry_id=8)
    uplink(core, 3, payload=b'{"n": 2}', entry_id=9)
    [log] = core.on_published(first.ref, 0x97, NOW)  # nothing deleted, nothing set aside
    assert log.level == "warn" and "quota" in text(log)
    [again] = core.on_tick(NOW + 1)
    assert again.ref != first.ref and again.payload == first.payload
    delete, second = core.on_published(again.ref, 0, NOW + 1)
    assert delete == Delete((8,)) and values(second) == {"n": 2}


def test_refused_connect_keeps_entries_and_connects_again_after_retry_after():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    [log] = core.on_published(connect.ref, 0x87, NOW)  # no data publish, no reply
    assert log.level == "warn" and "Dev A" in text(log)
    assert core.on_tick(NOW + 4) == []
    [again] = core.on_tick(NOW + 5)
    assert again.topic == CONNECT and again.ref != connect.ref
    [data] = core.on_published(again.ref, 0, NOW + 5)
    assert values(data) == {"t": 21.5}


def test_uplink_after_refused_connect_is_acknowledged_but_connect_waits_for_retry_after():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    core.on_published(connect.ref, 0x80, NOW)
    assert uplink(core, 2, now=NOW + 1) == [Reply(2, codes.CREATED)]
    [again] = core.on_tick(NOW + 5)
    assert again.topic == CONNECT and again.ref != connect.ref
    assert [values(p) for p in core.on_published(again.ref, 0, NOW + 5)] == [
        {"t": 21.5}, {"t": 21.5}]


# -- window and fairness ----------------------------------------------------------------

def test_publishes_waiting_for_puback_never_exceed_the_window():
    core = connected_core(window=2)
    sent = []
    for n in range(5):
        sent += publishes(uplink(core, 10 + n, payload=b'{"n": %d}' % n))
    assert [values(p) for p in sent] == [{"n": 0}, {"n": 1}]
    [third] = core.on_published(sent[0].ref, 0, NOW)[1:]
    assert values(third) == {"n": 2}
    assert publishes(core.on_tick(NOW + 1)) == []  # still two in flight


def test_devices_take_turns_so_a_backlog_does_not_starve_another_device():
    core = make_core({"tok": DEV_A, "tokb": DEV_B}, window=1)
    core.on_link_up(NOW)
    deliver(core, handled(core, req(1), NOW))
    deliver(core, handled(core, req(2, token="tokb"), NOW))  # both devices connected
    held = uplink(core, 10, payload=b'{"n": 0}')
    [first] = publishes(held)
    for n in range(1, 4):
        uplink(core, 10 + n, payload=b'{"n": %d}' % n)
    for n in (1, 2):
        uplink(core, 20 + n, payload=b'{"b": %d}' % n, token="tokb")
    order = []
    publish = first
    while publish is not None:
        order.append((publish.device, json.loads(publish.payload)[publish.device][0]["values"]))
        nxt = publishes(core.on_published(publish.ref, 0, NOW))
        publish = nxt[0] if nxt else None
    # Dev A's backlog was queued first; from then on the devices alternate
    assert order == [("Dev A", {"n": 0}), ("Dev A", {"n": 1}), ("Dev B", {"b": 1}),
                     ("Dev A", {"n": 2}), ("Dev B", {"b": 2}), ("Dev A", {"n": 3})]


# -- timeouts -------------------------------------------------------------------------

def test_overdue_puback_resets_the_link_once():
    core = connected_core()
    uplink(core, 2)
    assert core.on_tick(NOW + 10) == []  # not overdue by *more* than ack_timeout yet
    [reset] = core.on_tick(NOW + 11)
    assert isinstance(reset, ResetLink) and "PUBACK" in reset.reason
    assert core.on_tick(NOW + 12) == []


def test_entry_in_flight_at_link_reset_is_delivered_after_reconnect():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    core.on_tick(NOW + 11)
    assert core.on_link_down(NOW + 11) == []
    [connect] = core.on_link_up(NOW + 12)
    assert connect.topic == CONNECT
    [again] = core.on_published(connect.ref, 0, NOW + 12)
    assert again.payload == data.payload and again.ref != data.ref
    assert core.on_published(again.ref, 0, NOW + 12) == [Delete((8,))]


def test_connect_puback_timeout_sends_connect_again_and_ignores_the_late_puback():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    assert core.on_tick(NOW + 9) == []
    [again] = core.on_tick(NOW + 11)
    assert again.topic == CONNECT and again.ref != connect.ref
    assert core.on_published(connect.ref, 0, NOW + 12) == []  # late PUBACK of the first one
    [data] = core.on_published(again.ref, 0, NOW + 12)
    assert data.topic == TELEMETRY_TOPIC


def test_connect_not_sent_is_sent_again_on_the_next_tick():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    assert uplink(core, 2) == [Reply(2, codes.CREATED)]
    assert core.on_not_sent(connect.ref, NOW) == []  # both uplinks were answered already
    [again] = core.on_tick(NOW + 1)
    assert again.topic == CONNECT and again.ref != connect.ref
    assert len(core.on_published(again.ref, 0, NOW + 1)) == 2


def test_data_not_sent_is_published_again_and_its_old_ref_is_ignored():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    assert core.on_not_sent(data.ref, NOW) == []
    assert core.on_published(data.ref, 0, NOW) == []
    [again] = core.on_tick(NOW + 1)
    assert again.payload == data.payload and again.ref != data.ref
    assert core.on_published(again.ref, 0, NOW + 1) == [Delete((8,))]


def test_publishes_not_sent_in_a_burst_are_published_again_in_their_order():
    core = connected_core()
    sent = []
    for n in range(3):
        sent += publishes(uplink(core, 10 + n, payload=b'{"n": %d}' % n))
    for publish in sent:
        core.on_not_sent(publish.ref, NOW)
    assert [values(p) for p in core.on_tick(NOW + 1)] == [{"n": 0}, {"n": 1}, {"n": 2}]


# -- link loss and recovery ---------------------------------------------------------------

def test_link_down_answers_nothing_and_in_flight_entries_are_redelivered_in_order():
    core = connected_core()
    _, d2 = uplink(core, 2, payload=b'{"n": 2}', entry_id=8)
    _, d3 = uplink(core, 3, payload=b'{"n": 3}', entry_id=9)
    assert core.on_link_down(NOW + 1) == []
    assert core.on_published(d2.ref, 0, NOW + 2) == []  # PUBACK from the old connection
    assert core.on_tick(NOW + 20) == []
    [connect] = core.on_link_up(NOW + 21)
    assert connect.topic == CONNECT
    again = core.on_published(connect.ref, 0, NOW + 21)
    assert [values(p) for p in again] == [{"n": 2}, {"n": 3}]
    assert [core.on_published(p.ref, 0, NOW + 21) for p in again] == [[Delete((8,))], [Delete((9,))]]


def test_uplinks_while_link_down_are_acknowledged_and_delivered_after_reconnect():
    core = connected_core()
    core.on_link_down(NOW + 1)
    assert uplink(core, 2, payload=b'{"n": 2}', now=NOW + 2) == [Reply(2, codes.CREATED)]
    assert uplink(core, 3, payload=b'{"n": 3}', now=NOW + 2) == [Reply(3, codes.CREATED)]
    [connect] = core.on_link_up(NOW + 3)
    assert connect.topic == CONNECT
    assert [values(p) for p in core.on_published(connect.ref, 0, NOW + 3)] == [
        {"n": 2}, {"n": 3}]


def test_link_down_while_connect_pending_connects_again_on_link_up():
    core = make_core()
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    assert core.on_link_down(NOW) == []
    assert core.on_published(connect.ref, 0, NOW) == []  # PUBACK from the old connection
    [again] = core.on_link_up(NOW + 1)
    assert again.topic == CONNECT and again.ref != connect.ref
    [data] = core.on_published(again.ref, 0, NOW + 1)
    assert values(data) == {"t": 21.5}


def test_link_up_reconnects_recently_active_devices_only():
    core = make_core({"tok": DEV_A, "tokb": DEV_B})
    core.on_link_up(NOW)
    for ref, token, when in ((1, "tok", NOW), (2, "tokb", NOW + 500)):
        deliver(core, handled(core, req(ref, token=token), when), when)
    core.on_link_down(NOW + 550)

    actions = core.on_link_up(NOW + 700)  # Dev A idle 700 s (> 600), Dev B idle 200 s
    assert [(p.topic, p.payload) for p in actions] == [
        (CONNECT, b'{"device":"Dev B","type":"meter"}')]


def test_link_up_at_exact_idle_horizon_still_reconnects():
    core = connected_core()
    core.on_link_down(NOW + 1)
    [connect] = core.on_link_up(NOW + 600)
    assert connect.topic == CONNECT


def test_uplink_after_reconnect_waits_for_resent_connect():
    core = connected_core()
    core.on_link_down(NOW + 1)
    [connect] = core.on_link_up(NOW + 2)
    assert uplink(core, 2, now=NOW + 3) == [Reply(2, codes.CREATED)]  # connect already in flight
    [data] = core.on_published(connect.ref, 0, NOW + 3)
    assert data.topic == TELEMETRY_TOPIC


def test_forgotten_device_sends_connect_after_its_next_uplink_is_stored():
    core = connected_core()
    core.on_link_down(NOW + 1)
    assert core.on_link_up(NOW + 700) == []
    reply, connect = uplink(core, 2, now=NOW + 701)
    assert reply == Reply(2, codes.CREATED) and connect.topic == CONNECT


def test_link_up_after_a_long_outage_still_delivers_an_idle_devices_entries():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    core.on_link_down(NOW + 1)
    [connect] = core.on_link_up(NOW + 700)  # Dev A idle, but it has an undelivered entry
    assert connect.payload == b'{"device":"Dev A","type":"thermo"}'
    [again] = core.on_published(connect.ref, 0, NOW + 700)
    assert again.payload == data.payload


# -- platform renames ---------------------------------------------------------------------

def rename(core, old, new, now=NOW):
    doc = {"method": "gateway_device_renamed", "params": {old: new}}
    return core.on_message("v1/devices/me/rpc/request/1", json.dumps(doc).encode(), now)


def test_renamed_device_connects_under_its_new_name_and_delivers_its_stored_entries():
    core = connected_core()
    core.on_link_down(NOW)
    uplink(core, 2, payload=b'{"n": 1}')
    rename(core, "Dev A", "Dev Z")
    [connect] = core.on_link_up(NOW + 1)
    assert connect.payload == b'{"device":"Dev Z","type":"thermo"}'
    [data] = core.on_published(connect.ref, 0, NOW + 1)
    assert data.device == "Dev Z" and data.topic == TELEMETRY_TOPIC


def test_stored_uplink_of_a_renamed_device_is_published_under_the_new_name():
    core = connected_core()
    core.on_link_down(NOW)
    uplink(core, 2, payload=b'{"n": 1}')
    rename(core, "Dev A", "Dev Z")
    [connect] = core.on_link_up(NOW + 1)
    [data] = core.on_published(connect.ref, 0, NOW + 1)
    assert list(json.loads(data.payload)) == ["Dev Z"]


def test_uplink_still_being_written_at_a_rename_is_stored_and_published_under_the_new_name():
    core = connected_core()
    [store] = handled(core, req(2, payload=b'{"n": 1}'), NOW)  # handed to the outbox
    emitted = store.entry
    rename(core, "Dev A", "Dev Z")
    # a value: written as emitted; the edge renames the outbox's rows at RenameDevice
    assert store.entry is emitted and emitted.device == "Dev A"
    renamed = gateway.rename_device(emitted.topic, emitted.payload, "Dev A", "Dev Z")
    assert core.uplinks.storing_bytes == len(renamed)
    [reply, data] = store_all(core, [store])
    assert dotted(reply) == "2.01"
    assert data.device == "Dev Z" and list(json.loads(data.payload)) == ["Dev Z"]


def test_entry_in_flight_during_a_rename_is_redelivered_first_under_the_new_name():
    core = connected_core(window=1)
    uplink(core, 2, payload=b'{"n": 1}')  # in flight
    uplink(core, 3, payload=b'{"n": 2}')  # queued
    rename(core, "Dev A", "Dev Z")
    core.on_link_down(NOW)
    connects = core.on_link_up(NOW + 1)
    assert [c.payload for c in connects] == [b'{"device":"Dev Z","type":"thermo"}']
    [first] = core.on_published(connects[0].ref, 0, NOW + 1)
    [body] = json.loads(first.payload).values()  # whatever name it is keyed by
    assert body[0]["values"] == {"n": 1}


def test_entries_of_a_device_deleted_while_connecting_do_not_block_the_outbox():
    core = make_core({"tok": DEV_A, "tokb": DEV_B}, outbox_max_age=100)
    core.on_link_up(NOW)
    _, connect = uplink(core, 1)
    doc = {"method": "gateway_device_deleted", "params": "Dev A"}
    core.on_message("v1/devices/me/rpc/request/1", json.dumps(doc).encode(), NOW)
    deliver(core, core.on_published(connect.ref, 0, NOW))
    for t in range(1, 120):
        deliver(core, core.on_tick(NOW + t), NOW + t)  # the broker acknowledges everything
    assert of(handled(core, req(2, token="tokb"), NOW + 120), Store)


# -- restart: entries restored from the outbox ------------------------------------------

def restored(entry_id, payload=b'{"Dev A":[{"ts":1,"values":{"n":%d}}]}', device="Dev A",
             device_type="thermo", created=NOW - 60):
    return Entry(entry_id, device, device_type, TELEMETRY_TOPIC,
                 payload % entry_id if b"%d" in payload else payload, created)


def test_restored_entries_are_delivered_in_id_order_after_connect():
    core = make_core()
    assert core.on_restored([restored(5), restored(3)], NOW) == []  # link not up yet
    [connect] = core.on_link_up(NOW)
    assert connect.payload == b'{"device":"Dev A","type":"thermo"}'  # type from the entry
    first, second = core.on_published(connect.ref, 0, NOW)
    assert [values(first), values(second)] == [{"n": 3}, {"n": 5}]
    assert core.on_published(second.ref, 0, NOW) == [Delete((5,))]


def test_restored_entries_of_an_unregistered_device_are_delivered_too():
    core = make_core(devices={})
    core.on_link_up(NOW)
    [connect] = core.on_restored([restored(3, device="Old", device_type="valve")], NOW)
    assert connect.payload == b'{"device":"Old","type":"valve"}'
    [data] = core.on_published(connect.ref, 0, NOW)
    assert data.device == "Old"


def test_restored_entries_count_toward_the_outbox_bound():
    core = make_core(outbox_max_entries=2)
    core.on_restored([restored(1), restored(2)], NOW)
    _, reply = handled(core, req(1), NOW)
    assert dotted(reply) == "5.03"


# -- full outbox: 5.03 with Max-Age ---------------------------------------------------------

def test_full_outbox_answers_5_03_with_max_age_and_stores_nothing():
    core = make_core(outbox_max_entries=2)
    uplink(core, 1)
    uplink(core, 2)
    actions = handled(core, req(3), NOW)
    assert of(actions, Store) == []
    [reply] = replies(actions)
    assert (reply.ref, dotted(reply), reply.max_age) == (3, "5.03", RETRY_AFTER)


def test_uplinks_being_written_count_toward_the_outbox_bound():
    core = make_core(outbox_max_entries=2)
    first = handled(core, req(1), NOW)
    second = handled(core, req(2), NOW)
    assert len(of(first + second, Store)) == 2  # neither reported by on_stored yet
    assert dotted(replies(handled(core, req(3), NOW))[0]) == "5.03"


def test_full_outbox_warns_once_then_logs_info_when_it_accepts_again():
    core = connected_core(outbox_max_entries=1, window=1)
    _, data = uplink(core, 2, entry_id=8)
    warn, reply = handled(core, req(3), NOW)
    assert isinstance(warn, Log) and warn.level == "warn" and "full" in text(warn)
    assert dotted(reply) == "5.03"
    [reply] = handled(core, req(4), NOW)  # no second warning
    assert dotted(reply) == "5.03"
    assert core.on_published(data.ref, 0, NOW) == [Delete((8,))]
    info, store = handled(core, req(5), NOW)
    assert isinstance(info, Log) and info.level == "info"
    assert isinstance(store, Store)
    assert handled(core, req(6), NOW)[0].level == "warn"  # full again: warned again


def test_outbox_byte_bound_admits_an_uplink_that_fills_it_exactly():
    core = make_core()
    [store] = handled(core, req(1), NOW)
    size = len(store.entry.payload)
    core = make_core(outbox_max_bytes=2 * size)
    uplink(core, 1)
    [store] = handled(core, req(2), NOW)  # exactly at the bound
    assert isinstance(store, Store)
    store_all(core, [store])
    [reply] = replies(handled(core, req(3, payload=b'{"a":1}'), NOW))  # any byte is too many
    assert dotted(reply) == "5.03" and "bytes" in reply.reason


def test_outbox_age_bound_refuses_uplinks_once_the_oldest_entry_is_too_old():
    core = make_core(outbox_max_age=100)  # link down: the first entry stays
    uplink(core, 1, now=NOW)
    [store] = handled(core, req(2), NOW + 100)  # oldest exactly 100 s old: accepted
    assert isinstance(store, Store)
    [reply] = replies(handled(core, req(3), NOW + 101))
    assert dotted(reply) == "5.03" and "older" in reply.reason


def test_delivering_the_old_entries_lifts_the_age_bound():
    core = make_core(outbox_max_age=100)
    uplink(core, 1, now=NOW)
    assert dotted(replies(handled(core, req(2), NOW + 101))[0]) == "5.03"
    deliver(core, core.on_link_up(NOW + 102), NOW + 102)
    assert of(handled(core, req(3), NOW + 103), Store)


# -- draining at shutdown -----------------------------------------------------------------

def test_draining_stops_publishing_but_still_acknowledges_uplinks_and_puback():
    core = connected_core()
    _, data = uplink(core, 2, entry_id=8)
    core.draining = True
    assert uplink(core, 3) == [Reply(3, codes.CREATED)]  # stored, not published
    assert core.on_published(data.ref, 0, NOW) == [Delete((8,))]  # in flight: still finished
    assert publishes(core.on_tick(NOW + 1)) == []


# -- idle disconnect --------------------------------------------------------------------------

def test_idle_device_gets_disconnect_publish_after_idle_timeout():
    core = connected_core()
    assert core.on_tick(NOW + 600) == []  # not idle *longer* than idle_timeout yet
    [disconnect] = core.on_tick(NOW + 601)
    assert isinstance(disconnect, Publish)
    assert (disconnect.topic, disconnect.payload) == (
        "v1/gateway/disconnect", b'{"device":"Dev A"}')
    assert core.on_tick(NOW + 700) == []  # only once
    assert core.on_published(disconnect.ref, 0, NOW + 700) == []


def test_activity_postpones_idle_disconnect():
    core = connected_core()
    deliver(core, handled(core, req(2), NOW + 300), NOW + 300)
    assert core.on_tick(NOW + 601) == []
    assert [p.topic for p in core.on_tick(NOW + 901)] == ["v1/gateway/disconnect"]


def test_device_with_an_undelivered_entry_is_not_disconnected_as_idle():
    core = connected_core(puback_timeout=10_000)
    _, data = uplink(core, 2)
    assert core.on_tick(NOW + 601) == []
    assert of(core.on_published(data.ref, 0, NOW + 602), Delete)
    assert [p.topic for p in core.on_tick(NOW + 603)] == ["v1/gateway/disconnect"]


def test_device_reconnects_after_idle_disconnect():
    core = connected_core()
    core.on_tick(NOW + 601)
    _, connect = uplink(core, 2, now=NOW + 602)
    assert connect.topic == CONNECT


def test_no_idle_disconnect_while_link_down():
    core = connected_core()
    core.on_link_down(NOW + 1)
    assert core.on_tick(NOW + 700) == []


# -- payload handling -------------------------------------------------------------------------

def test_oversized_payload_gets_4_13_with_size1_and_is_not_stored():
    core = make_core(max_packet_size=200)
    core.on_link_up(NOW)
    actions = handled(core, req(1, payload=b'{"v": "%s"}' % (b"x" * 300)), NOW)
    assert of(actions, Store) == [] and publishes(actions) == []
    [reply] = actions
    assert (reply.ref, dotted(reply), reply.size1) == (1, "4.13", 200)
    assert b"200" in reply.payload


def test_payload_exactly_at_packet_limit_is_accepted_and_one_more_byte_is_not():
    # gateway message for {"v": "<n x>"} from Dev A at NOW, QoS 1, MQTT 5:
    # topic 20 B; payload {"Dev A":[{"ts":1700000000500,"values":{"v":"..."}}]} = 50 + n B
    # packet = 1 + 2 (remaining length) + 2 + 20 + 2 + 1 + 50 + n = 78 + n
    n = 200 - 78
    core = make_core(max_packet_size=200)
    core.on_link_up(NOW)
    [store] = handled(core, req(1, payload=b'{"v":"%s"}' % (b"x" * n)), NOW)
    assert isinstance(store, Store) and len(store.entry.payload) == 50 + n
    [reply] = handled(core, req(2, payload=b'{"v":"%s"}' % (b"x" * (n + 1))), NOW)
    assert (dotted(reply), reply.size1) == ("4.13", 200)


def test_telemetry_without_ts_is_stored_with_receipt_time_in_ms():
    core = connected_core()
    [store] = handled(core, req(2, payload=b'{"a": 1}'), NOW + 1.25)
    assert json.loads(store.entry.payload) == {"Dev A": [{"ts": int((NOW + 1.25) * 1000),
                                                    "values": {"a": 1}}]}


def test_receipt_time_is_kept_when_the_entry_is_delivered_later():
    core = connected_core()
    core.on_link_down(NOW)
    uplink(core, 2, payload=b'{"a": 1}', now=NOW + 1.25)
    [connect] = core.on_link_up(NOW + 30)
    [data] = core.on_published(connect.ref, 0, NOW + 30)
    assert json.loads(data.payload)["Dev A"][0]["ts"] == int((NOW + 1.25) * 1000)


def test_telemetry_with_ts_keeps_device_time():
    core = connected_core()
    [store] = handled(core, req(2, payload=b'{"ts": 1000, "values": {"a": 1}}'), NOW)
    assert store.entry.payload == b'{"Dev A":[{"ts":1000,"values":{"a":1}}]}'


def test_attributes_post_stores_gateway_attributes():
    core = connected_core()
    [store] = handled(core, req(2, feature="attributes", payload=b'{"fw": "1.0"}'), NOW)
    assert store.entry.topic == "v1/gateway/attributes"
    assert json.loads(store.entry.payload) == {"Dev A": {"fw": "1.0"}}
    reply, data = store_all(core, [store])
    assert reply == Reply(2, codes.CREATED) and data.topic == "v1/gateway/attributes"


def test_claim_post_with_empty_payload_stores_defaults():
    core = connected_core()
    [store] = handled(core, req(2, feature="claim", payload=b""), NOW)
    assert (store.entry.topic, store.entry.payload) == (
        "v1/gateway/claim", b'{"Dev A":{"secretKey":"","durationMs":0}}')


def test_rpc_reply_post_stores_gateway_rpc_with_the_devices_data():
    core = connected_core()
    [store] = handled(core, Request(2, codes.POST, ("api", "v1", "tok", "rpc", "42"),
                                      b'{"ok": true}'), NOW)
    assert isinstance(store, Store)
    assert (store.entry.topic, json.loads(store.entry.payload)) == (
        "v1/gateway/rpc", {"device": "Dev A", "id": 42, "data": {"ok": True}})


def test_rpc_reply_to_the_largest_int_id_is_stored():
    core = connected_core()
    [store] = handled(core, Request(2, codes.POST, ("api", "v1", "tok", "rpc", "2147483647"),
                                      b'{"ok": true}'), NOW)
    assert json.loads(store.entry.payload)["id"] == 2 ** 31 - 1


@pytest.mark.parametrize("path", [("api", "v1", "tok", "rpc", str(2 ** 31)),
                                  ("api", "v1", "tok", "rpc", str(10 ** 23))])
def test_rpc_reply_to_an_id_beyond_the_platforms_int_gets_4_00(path):
    core = connected_core()
    [reply] = handled(core, Request(2, codes.POST, path, b'{"ok": true}'), NOW)
    assert dotted(reply) == "4.00" and b"out of range" in reply.payload


def deep(levels):
    return b'{"v": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("path", [("api", "v1", "tok", "telemetry"),
                                  ("api", "v1", "tok", "attributes"),
                                  ("api", "v1", "tok", "claim"),
                                  ("api", "v1", "tok", "rpc", "7"),
                                  ("api", "v1", "tok", "rpc"),
                                  ("api", "v1", "provision")])
def test_deeply_nested_json_gets_4_00_on_every_api(path):
    core = connected_core(json_max_depth=8)
    [reply] = handled(core, Request(2, codes.POST, path, deep(1200)), NOW)
    assert dotted(reply) == "4.00" and b"nested deeper than 8 levels" in reply.payload


def test_duplicate_keys_are_forwarded_once_with_the_last_value():
    core = connected_core()

    def pairs(text):
        """Every key of every object in ``text``, repeats included (json.loads hides them)."""
        found = []

        def hook(items):
            found.extend(key for key, _ in items)
            return dict(items)
        json.loads(text, object_pairs_hook=hook)
        return found
    for ref, (feature, payload) in enumerate([("telemetry", b'{"a": 1, "b": 3, "a": 2}'),
                                              ("attributes", b'{"a": 1, "b": 3, "a": 2}')], 2):
        [store] = handled(core, req(ref, feature=feature, payload=payload), NOW)
        doc = json.loads(store.entry.payload)["Dev A"]
        assert (doc[0]["values"] if feature == "telemetry" else doc) == {"a": 2, "b": 3}
        assert pairs(store.entry.payload).count("a") == 1
    [store] = core.on_uplinks([(9, "tok", "telemetry", b'{"a":1,"a":2}', None)], NOW)
    assert json.loads(store.entries[0].payload)["Dev A"][0]["values"] == {"a": 2}
    assert pairs(store.entries[0].payload).count("a") == 1


def test_bad_json_gets_4_00_and_nothing_is_stored():
    core = connected_core()
    [reply] = handled(core, req(2, payload=b"{nope"), NOW)
    assert dotted(reply) == "4.00"
    assert reply.content_format == codes.TEXT_PLAIN


def test_bad_json_from_new_device_does_not_send_connect():
    core = make_core()
    core.on_link_up(NOW)
    actions = handled(core, req(1, payload=b"[]"), NOW)
    assert publishes(actions) == [] and of(actions, Store) == []


@pytest.mark.parametrize("method,feature,expected", [
    (codes.GET, "telemetry", "4.00"),
    (codes.GET, "claim", "4.00"),
    (codes.GET, "rpc", "4.00"),  # /rpc needs Observe
])
def test_unsupported_operations_are_refused_without_store_or_publish(method, feature, expected):
    core = connected_core()
    actions = handled(core, req(2, feature=feature, method=method, payload=b'{"a": 1}'), NOW)
    [reply] = actions
    assert dotted(reply) == expected



def test_provisioning_is_rate_limited_per_source_address_with_4_29_and_max_age():
    core = GatewayCore(core_config(provision_rate=0.5, provision_burst=2), lambda token: None)
    body = b'{"provisionDeviceKey": "k", "provisionDeviceSecret": "s"}'

    def provision(ref, remote, now):
        [action] = handled(core, Request(ref, codes.POST, ("api", "v1", "provision"), body,
                                           remote=remote), now)
        return action
    assert [type(provision(n, ("10.0.0.1", 1000 + n), NOW)).__name__ for n in (1, 2)] \
        == ["Provision", "Provision"]
    limited = provision(3, ("10.0.0.1", 2000), NOW)  # another port of the same address
    assert (codes.dotted(limited.code), limited.max_age) == ("4.29", 2)
    assert type(provision(4, ("10.0.0.2", 1000), NOW)).__name__ == "Provision"
    assert type(provision(5, ("10.0.0.1", 1000), NOW + 2)).__name__ == "Provision"
    assert core.stats["rate_limited"] == 1


# -- the authenticated marker: the edge learns a credential was valid from the actions -----

def test_a_request_with_a_valid_token_is_marked_authenticated_before_its_other_actions():
    from bridge.core.actions import Authenticated, Store
    actions = make_core().on_request(req(7), NOW)
    assert [type(a) for a in actions] == [Authenticated, Store] and actions[0].ref == 7


def test_an_error_after_a_valid_token_is_still_marked_authenticated():
    from bridge.core.actions import Authenticated
    first, reply = make_core().on_request(req(8, payload=b"{"), NOW)
    assert first == Authenticated(8) and (reply.ref, dotted(reply)) == (8, "4.00")


def test_an_unknown_token_is_not_marked_authenticated():
    [reply] = make_core().on_request(req(9, token="nope"), NOW)
    assert isinstance(reply, Reply) and dotted(reply) == "4.01"
