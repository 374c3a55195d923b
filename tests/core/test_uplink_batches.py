"""``GatewayCore.on_uplinks``: the plain uplinks of a turn in bulk, answered as ``on_request``
answers each of them."""

import json

import pytest

from bridge.core import codes, gateway
from bridge.core.actions import (Created, Device, Log, Publish, Reply, Request, Store,
                                 StoreMany)
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from logtext import text

NOW = 1_700_000_000.5
DEVICES = {"tokA": Device("Dev A", "thermo"), "tokB": Device("Dev B", "meter")}
REMOTE = ("10.0.0.7", 5683)

# (token, feature, payload): every way an uplink can end, some more than once
MIXED = [
    ("tokA", "telemetry", b'{"t": 21.5}'),  # as sent
    ("tokB", "attributes", b'{"fw": "1.2"}'),  # as sent
    ("nope", "telemetry", b'{"t": 1}'),  # 4.01
    ("tokA", "telemetry", b'{"t": '),  # 4.00, invalid JSON
    ("tokA", "telemetry", b'[{"ts": 5, "values": {"t": 1}}, {"u": null, "v": 2}]'),  # re-encoded
    ("tokB", "attributes", b'{"a": null, "b": 1}'),  # re-encoded without the null
    ("tokA", "attributes", b'[1]'),  # 4.00, not an object
    ("tokA", "telemetry", b'{"big": "%s"}' % (b"x" * 300)),  # 4.13 past max_packet_size
    ("tokB", "telemetry", b'{"t": 3}'),
    ("tokA", "telemetry", b'{"t": 4}'),  # 4.29: Dev A's sixth request in its burst of 5
    ("tokB", "telemetry", b'{"t": 5}'),  # 5.03: the outbox holds 5 at most
]
SETTINGS = dict(max_packet_size=300, outbox_max_entries=5, device_rate=1.0, device_burst=5)


def make_core(**settings):
    core = GatewayCore(core_config(**dict(SETTINGS, **settings)), DEVICES.get)
    core.on_link_up(NOW)
    return core


def one_by_one(core, uplinks, now=NOW):
    """What ``on_request`` answers to each uplink, with every Store reported at once."""
    answers, rows, stores = {}, [], []
    for ref, (token, feature, payload) in enumerate(uplinks, 1):
        for action in handled(core, Request(ref, codes.POST, ("api", "v1", token, feature),
                                              payload, remote=REMOTE), now):
            if isinstance(action, Reply):
                answers[ref] = (action.code, action.payload, action.max_age, action.size1)
            elif isinstance(action, Store):
                stores.append((ref, action))
                entry = action.entry
                rows.append((entry.device, entry.device_type, entry.topic, entry.payload))
    stored = core.on_stored([(store.ref, 100 + n) for n, (_, store) in enumerate(stores)], now)
    for action in stored:
        if isinstance(action, Reply):
            answers[action.ref] = (action.code, action.payload, action.max_age, action.size1)
    return answers, rows, published(stored)


def published(actions):
    # refs of the core's own publishes may differ: one per Store, one per StoreMany
    return [(a.topic, a.payload, a.device) for a in actions if isinstance(a, Publish)]


def in_bulk(core, uplinks, now=NOW):
    batch = [(ref, token, feature, payload, REMOTE)
             for ref, (token, feature, payload) in enumerate(uplinks, 1)]
    actions = core.on_uplinks(batch, now)
    answers = {a.ref: (a.code, a.payload, a.max_age, a.size1)
               for a in actions if isinstance(a, Reply)}
    stores = [a for a in actions if isinstance(a, StoreMany)]
    assert len(stores) <= 1 and not [a for a in actions if isinstance(a, Store)]
    rows = [(e.device, e.device_type, e.topic, e.payload) for e in stores[0].entries] \
        if stores else []
    stored = core.on_stored([(stores[0].ref, 100)], now) if stores else []
    for action in stored:
        if isinstance(action, Created):
            answers.update((ref, (codes.CREATED, b"", None, None)) for ref in action.refs)
    return answers, rows, published(stored)


def test_a_turn_in_bulk_is_answered_stored_and_published_as_one_request_at_a_time():
    expected = one_by_one(make_core(), MIXED)
    got = in_bulk(make_core(), MIXED)
    assert got == expected
    answers, rows, publishes = got
    assert [codes.dotted(answers[ref][0]) for ref in sorted(answers)] == [
        "2.01", "2.01", "4.01", "4.00", "2.01", "2.01", "4.00", "4.13", "2.01", "4.29", "5.03"]
    assert [json.loads(row[3]) for row in rows][4] == {"Dev B": [{"ts": int(NOW * 1000),
                                                                  "values": {"t": 3}}]}
    assert {topic for topic, _, _ in publishes} == {"v1/gateway/connect"}  # then the data


def test_rate_limits_apply_in_bulk_as_one_request_at_a_time():
    uplinks = [("tokA", "telemetry", b'{"t": %d}' % n) for n in range(5)]
    one, bulk = (make_core(outbox_max_entries=100, peer_rate=1.0, peer_burst=4)
                 for _ in "ab")
    expected = one_by_one(one, uplinks)
    got = in_bulk(bulk, uplinks)
    assert got == expected
    assert one.stats["rate_limited"] == bulk.stats["rate_limited"] == 1
    assert [codes.dotted(got[0][ref][0]) for ref in range(1, 6)] == ["2.01"] * 4 + ["4.29"]


def test_errors_after_a_valid_token_say_so():
    actions = make_core(device_burst=1).on_uplinks([
        (1, "tokA", "telemetry", b"{", REMOTE),
        (2, "nope", "telemetry", b"{}", REMOTE),
        (3, "tokA", "telemetry", b"{}", REMOTE)], NOW)
    bad_json, unknown, limited = [a for a in actions if isinstance(a, Reply)]
    assert (bad_json.code, bad_json.authenticated) == (codes.BAD_REQUEST, True)
    assert (unknown.code, unknown.authenticated) == (codes.UNAUTHORIZED, False)
    assert (limited.code, limited.authenticated) == (codes.TOO_MANY_REQUESTS, True)


def test_rows_take_consecutive_ids_and_count_as_being_written_until_stored():
    core = make_core(outbox_max_entries=100)
    [store] = core.on_uplinks([(n, "tokA", "telemetry", b'{"t": %d}' % n, REMOTE)
                               for n in (1, 2, 3)], NOW)
    assert core.uplinks.storing_count == 3 and core.uplinks.storing_bytes == sum(len(e.payload) for e in store.entries)
    core.on_stored([(store.ref, 41)], NOW)
    assert core.uplinks.storing_count == 0 and core.uplinks.storing_bytes == 0
    assert [e.id for e in core.outbox.delivery.queues["Dev A"]] == [41, 42, 43]
    assert core.stats["acknowledged"] == 3


def test_a_failed_write_answers_every_uplink_of_the_batch_5_03():
    core = make_core(outbox_max_entries=100)
    [store] = core.on_uplinks([(n, "tokA", "telemetry", b'{"t": 1}', REMOTE) for n in (1, 2)],
                              NOW)
    log, *answers = core.on_store_failed([store.ref], "disk I/O error", NOW)
    assert isinstance(log, Log) and log.level == "error"
    assert [(a.ref, a.code, a.max_age) for a in answers] == [
        (1, codes.SERVICE_UNAVAILABLE, 5), (2, codes.SERVICE_UNAVAILABLE, 5)]
    assert core.uplinks.storing_count == 0 and core.uplinks.storing_bytes == 0
    assert core.stats["store_failed"] == 2


def test_a_rename_while_the_batch_is_written_delivers_its_entries_under_the_new_name():
    core = make_core(outbox_max_entries=100)
    [store] = core.on_uplinks([(1, "tokA", "telemetry", b'{"t": 1}', REMOTE),
                               (2, "tokB", "telemetry", b'{"t": 2}', REMOTE)], NOW)
    written = list(store.entries)
    core.rename("Dev A", "Kitchen")
    # the action is a value: the edge writes it as emitted, and renames what the outbox
    # holds when it applies the platform's rename (tests/edge/test_bridge_glue.py)
    assert list(store.entries) == written and [e.device for e in written] == ["Dev A", "Dev B"]
    renamed = gateway.rename_device(written[0].topic, written[0].payload, "Dev A", "Kitchen")
    assert core.uplinks.storing_bytes == len(renamed) + len(written[1].payload)
    core.on_stored([(store.ref, 7)], NOW)
    [entry] = core.outbox.delivery.queues["Kitchen"]
    assert (entry.id, entry.device, entry.payload) == (7, "Kitchen", renamed)
    assert list(json.loads(entry.payload)) == ["Kitchen"]
    assert [e.id for e in core.outbox.delivery.queues["Dev B"]] == [8]


def many_devices(n):
    return {"tok%d" % i: Device("Dev %d" % i, "sensor") for i in range(n)}


def deep(levels):
    return b'{"v": ' + b"[" * levels + b"]" * levels + b"}"


def test_one_deeply_nested_body_gets_4_00_and_the_others_of_its_turn_are_stored():
    devices = many_devices(30)
    core = GatewayCore(core_config(), devices.get)
    core.on_link_up(NOW)
    batch = [(n + 1, "tok%d" % n, "telemetry", b'{"t": %d}' % n, REMOTE) for n in range(29)]
    batch.insert(12, (99, "tok29", "telemetry", deep(1200), REMOTE))
    actions = core.on_uplinks(batch, NOW)
    [reply] = [a for a in actions if isinstance(a, Reply)]
    assert (reply.ref, codes.dotted(reply.code)) == (99, "4.00")
    assert b"nested deeper than 32 levels" in reply.payload and reply.authenticated
    assert not [a for a in actions if isinstance(a, Log)]
    [store] = [a for a in actions if isinstance(a, StoreMany)]
    assert [e.device for e in store.entries] == ["Dev %d" % n for n in range(29)]
    [created] = [a for a in core.on_stored([(store.ref, 1)], NOW) if isinstance(a, Created)]
    assert sorted(created.refs) == list(range(1, 30))


def test_a_bug_in_one_uplink_answers_it_5_00_and_the_rest_of_its_turn_is_stored():
    core = make_core(outbox_max_entries=100, device_rate=0)
    bug = RuntimeError("bug")

    def lookup(token):
        if token == "tokB":
            raise bug
        return DEVICES.get(token)
    core.auth.lookup = lookup
    batch = [(1, "tokA", "telemetry", b'{"t": 1}', REMOTE),
             (2, "tokB", "telemetry", b'{}', REMOTE),
             (3, "tokA", "attributes", b'{"a": 1}', REMOTE),
             (4, "tokB", "telemetry", b'{}', REMOTE)]
    actions = core.on_uplinks(batch, NOW)
    assert [(a.ref, codes.dotted(a.code)) for a in actions if isinstance(a, Reply)] == [
        (2, "5.00"), (4, "5.00")]
    [log] = [a for a in actions if isinstance(a, Log)]  # one line per turn, with the traceback
    assert log.level == "error" and log.error is bug and "and 1 more" in text(log)
    [store] = [a for a in actions if isinstance(a, StoreMany)]
    assert [e.topic for e in store.entries] == ["v1/gateway/telemetry", "v1/gateway/attributes"]
    assert core.uplinks.storing_count == 2
    [created] = [a for a in core.on_stored([(store.ref, 1)], NOW) if isinstance(a, Created)]
    assert created.refs == (1, 3)


def test_a_malformed_batch_leaves_nothing_counted_as_being_written():
    core = make_core(outbox_max_entries=100)
    batch = [(n, "tokA", "telemetry", b'{"t": 1}', REMOTE) for n in (1, 2)] + [(3, "tokA")]
    with pytest.raises(ValueError):  # a bug in the edge: it answers the whole turn 5.00
        core.on_uplinks(batch, NOW)
    assert (core.uplinks.storing_count, core.uplinks.storing_bytes, core.uplinks.storing) == (0, 0, {})
    [store] = core.on_uplinks([(4, "tokA", "telemetry", b'{"t": 1}', REMOTE)], NOW)
    assert core.uplinks.storing_count == 1



@pytest.mark.parametrize("bound", [dict(outbox_max_entries=3),
                                   dict(outbox_max_entries=100, outbox_max_bytes=150)])
def test_a_bound_reached_within_a_turn_applies_in_bulk_as_one_request_at_a_time(bound):
    # the bulk path admits within the room it computed at the turn's start: the uplink
    # that would pass outbox.max_entries or max_bytes gets 5.03 as one request at a time
    # would; a packet size that every uplink here fits at once (SETTINGS' 300 sends each
    # to the careful path)
    uplinks = [("tokA" if n % 2 else "tokB", "telemetry", b'{"t": %d}' % n) for n in range(6)]
    settings = dict(bound, max_packet_size=65536)
    expected = one_by_one(make_core(**settings), uplinks)
    got = in_bulk(make_core(**settings), uplinks)
    assert got == expected
    assert [codes.dotted(got[0][ref][0]) for ref in sorted(got[0])] == ["2.01"] * 3 + \
        ["5.03"] * 3
    assert len(got[1]) == 3
