"""Tests of batching: stored uplinks of many devices merged into one MQTT publish.

Three layers: ``gateway.merge`` (the payload of a batch), ``Delivery.take_batch`` and its
bookkeeping (which entries share a publish), and ``GatewayCore`` with ``max_batch`` > 1
(publishes, PUBACKs, refusals, link loss, the window).
"""

import collections
import itertools
import json

import pytest

from bridge.core import codes, gateway, payloads
from bridge.core.actions import DeadLetter, Delete, Device, Log, Publish, Reply, Request, Store
from bridge.core.delivery import Delivery, Entry
from bridge.core.payloads import TelemetryEntry
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from logtext import text

NOW = 1_700_000_000.5
TELEMETRY = gateway.TELEMETRY
ATTRIBUTES = gateway.ATTRIBUTES
CONNECT = gateway.CONNECT


# == gateway.merge =========================================================================

def tel(device, *entries):
    """A telemetry message as the core stores it; entries are (ts, values)."""
    return device, gateway.telemetry(device, [TelemetryEntry(ts, v) for ts, v in entries])[1]


def attr(device, values):
    return device, gateway.attributes(device, values)[1]


@pytest.fixture
def slow_path(monkeypatch):
    """Records the calls of the decoding slow path of merge (still runs it)."""
    calls = []
    real = gateway._merge_decoded

    def spy(topic, messages):
        calls.append(topic)
        return real(topic, messages)
    monkeypatch.setattr(gateway, "_merge_decoded", spy)
    return calls


def test_merge_telemetry_of_several_devices_gives_one_document_in_their_order(slow_path):
    messages = [tel("A", (1, {"t": 1})), tel("B", (2, {"t": 2.5}), (3, {"s": "x"})),
                tel("C", (4, {"on": True}))]
    merged = gateway.merge(TELEMETRY, messages)
    expected = {"A": [{"ts": 1, "values": {"t": 1}}],
                "B": [{"ts": 2, "values": {"t": 2.5}}, {"ts": 3, "values": {"s": "x"}}],
                "C": [{"ts": 4, "values": {"on": True}}]}
    doc = json.loads(merged)
    assert doc == expected
    assert list(doc) == ["A", "B", "C"]
    assert merged == payloads.dumps(expected)  # compact, as the gateway topics carry it
    assert slow_path == []  # the byte-level fast path did it


def test_merge_concatenates_the_telemetry_messages_of_one_device_in_order(slow_path):
    messages = [tel("A", (1, {"n": 1})), tel("B", (5, {"b": 1})), tel("A", (2, {"n": 2}), (3, {"n": 3})),
                tel("A", (4, {"n": 4}))]
    doc = json.loads(gateway.merge(TELEMETRY, messages))
    assert doc == {"A": [{"ts": n, "values": {"n": n}} for n in (1, 2, 3, 4)],
                   "B": [{"ts": 5, "values": {"b": 1}}]}
    assert list(doc) == ["A", "B"]
    assert slow_path == []


def test_merge_attributes_of_several_devices(slow_path):
    messages = [attr("A", {"fw": "1.0", "n": 3}), attr("B", {"nested": {"x": [1, None]}}),
                attr("C", {"on": False})]
    merged = gateway.merge(ATTRIBUTES, messages)
    expected = {"A": {"fw": "1.0", "n": 3}, "B": {"nested": {"x": [1, None]}}, "C": {"on": False}}
    assert json.loads(merged) == expected
    assert merged == payloads.dumps(expected)
    assert slow_path == []


@pytest.mark.parametrize("topic", [TELEMETRY, ATTRIBUTES])
def test_merge_device_names_needing_json_escaping(topic, slow_path):
    names = ['Gerät "7"', "back\\slash", "tab\there", "日本 ✓", "plain"]
    if topic == TELEMETRY:
        messages = [tel(name, (i, {"i": i})) for i, name in enumerate(names)]
        expected = {name: [{"ts": i, "values": {"i": i}}] for i, name in enumerate(names)}
    else:
        messages = [attr(name, {"i": i}) for i, name in enumerate(names)]
        expected = {name: {"i": i} for i, name in enumerate(names)}
    merged = gateway.merge(topic, messages)
    doc = json.loads(merged.decode("utf-8"))
    assert doc == expected
    assert list(doc) == names
    assert slow_path == []  # the key the fast path looks for is escaped like dumps does it


def test_merge_takes_the_slow_path_for_payloads_of_another_shape(slow_path):
    messages = [("A", b'{ "A" : [ {"ts": 1, "values": {"n": 1}} ] }'),
                tel("B", (2, {"n": 2})),
                ("A", b'{"A": {"ts": 3, "values": {"n": 3}}}')]  # one entry, not an array
    doc = json.loads(gateway.merge(TELEMETRY, messages))
    assert doc == {"A": [{"ts": 1, "values": {"n": 1}}, {"ts": 3, "values": {"n": 3}}],
                   "B": [{"ts": 2, "values": {"n": 2}}]}
    assert slow_path == [TELEMETRY]


def test_merge_attributes_in_another_shape_or_twice_for_a_device_takes_the_slow_path(slow_path):
    messages = [("A", b'{"A" : {"a": 1}}'), attr("B", {"b": 2})]
    assert json.loads(gateway.merge(ATTRIBUTES, messages)) == {"A": {"a": 1}, "B": {"b": 2}}
    messages = [attr("A", {"a": 1, "x": 1}), attr("A", {"x": 2})]
    assert json.loads(gateway.merge(ATTRIBUTES, messages)) == {"A": {"a": 1, "x": 2}}
    assert slow_path == [ATTRIBUTES, ATTRIBUTES]


def test_merge_of_a_payload_whose_key_is_another_device_takes_the_slow_path(slow_path):
    # e.g. an entry renamed while its payload kept the old key: the payload is the truth
    messages = [("A", tel("Old", (1, {"n": 1}))[1]), tel("B", (2, {"n": 2}))]
    doc = json.loads(gateway.merge(TELEMETRY, messages))
    assert doc == {"Old": [{"ts": 1, "values": {"n": 1}}], "B": [{"ts": 2, "values": {"n": 2}}]}
    assert slow_path == [TELEMETRY]


@pytest.mark.parametrize("payload", [tel("A", (1, {"n": 1}))[1], b'{ "A" : [ {"n": 1} ] }'])
def test_merge_of_a_single_message_returns_it_unchanged(payload, slow_path):
    assert gateway.merge(TELEMETRY, [("A", payload)]) is payload
    assert slow_path == []


# == Delivery.take_batch ===================================================================

RPC = gateway.RPC
CLAIM = gateway.CLAIM
_refs = itertools.count(1)


def ent(entry_id, device="A", topic=TELEMETRY, payload=None, created=None):
    payload = b"x" * 4 if payload is None else payload
    return Entry(entry_id, device, "thermo", topic, payload,
                 NOW + entry_id if created is None else created)


def batching(entries=(), window=100, max_batch=100, max_bytes=1 << 30):
    delivery = Delivery(window, max_batch, max_bytes, dict(gateway.MERGEABLE))
    for item in entries:
        delivery.add(item)
    return delivery


def take(delivery, blocked=None, now=NOW):
    """The ids of the next batch and its ref (the batch is in flight)."""
    ref = next(_refs)
    if blocked is None:
        batch = delivery.take_batch(ref, now)
    else:
        batch = delivery.take_batch(ref, now, blocked)
    return ref, [e.id for e in batch]


def batches(delivery, limit=100):
    """Every batch until none is left (done at once), as lists of ids."""
    out = []
    for _ in range(limit):
        ref, ids = take(delivery)
        if not ids:
            break
        out.append(ids)
        delivery.done(ref)
    return out


def queued(delivery, device):
    return [e.id for e in delivery.queues.get(device, ())]


def test_take_batch_with_nothing_queued_is_empty_and_not_in_flight():
    delivery = batching()
    ref, ids = take(delivery)
    assert ids == [] and delivery.in_flight == {}


def test_take_batch_merges_devices_up_to_max_batch():
    delivery = batching([ent(n, "D%d" % n) for n in range(1, 6)], max_batch=3)
    ref, ids = take(delivery)
    assert ids == [1, 2, 3]
    assert [e.id for e in delivery.in_flight[ref][0]] == [1, 2, 3]
    assert batches(delivery) == [[4, 5]]


def test_max_batch_also_cuts_the_run_of_one_device():
    delivery = batching([ent(n, "A") for n in range(1, 6)] + [ent(6, "B")], max_batch=4)
    assert batches(delivery) == [[1, 2, 3, 4], [6, 5]]  # A used its turn: B goes first


def test_max_batch_one_is_one_entry_per_publish_in_turns():
    delivery = batching([ent(1, "A"), ent(2, "A"), ent(3, "B")], max_batch=1)
    assert batches(delivery) == [[1], [3], [2]]


def test_take_batch_bounds_the_bytes_of_a_batch():
    entries = [ent(n, "D%d" % n, payload=b"x" * 4) for n in range(1, 6)]
    delivery = batching(entries, max_bytes=10)
    assert batches(delivery) == [[1, 2], [3, 4], [5]]


def test_a_batch_may_fill_max_bytes_exactly():
    delivery = batching([ent(1, "A", payload=b"x" * 6), ent(2, "B", payload=b"y" * 4),
                         ent(3, "C", payload=b"z")], max_bytes=10)
    assert batches(delivery) == [[1, 2], [3]]


def test_first_entry_is_taken_even_when_bigger_than_max_bytes():
    delivery = batching([ent(1, "A", payload=b"x" * 50), ent(2, "A", payload=b"x"),
                         ent(3, "B", payload=b"y")], max_bytes=10)
    ref, ids = take(delivery)
    assert ids == [1]
    delivery.done(ref)
    assert batches(delivery) == [[3, 2]]  # B kept its turn, A's next is small enough


def test_bytes_bound_also_cuts_the_run_of_one_device():
    delivery = batching([ent(n, "A", payload=b"x" * 4) for n in range(1, 5)], max_bytes=8)
    assert batches(delivery) == [[1, 2], [3, 4]]


def test_run_of_a_device_stops_at_an_entry_of_another_topic():
    delivery = batching([ent(1, "A"), ent(2, "A", ATTRIBUTES), ent(3, "A"), ent(4, "B")])
    ref1, first = take(delivery)
    assert first == [1, 4]  # A's telemetry 3 must not jump ahead of its attributes 2
    assert queued(delivery, "A") == [2, 3]
    ref2, second = take(delivery)
    assert second == [2]
    ref3, third = take(delivery)
    assert third == [3]
    assert len(delivery.in_flight) == 3  # the window is the caller's: all three in flight


def test_device_whose_head_is_on_another_topic_is_not_merged_past_it():
    delivery = batching([ent(1, "A"), ent(2, "B", ATTRIBUTES), ent(3, "B"), ent(4, "C")])
    assert batches(delivery) == [[1, 4], [2], [3]]


def test_attributes_at_most_one_per_device_per_batch():
    delivery = batching([ent(1, "A", ATTRIBUTES), ent(2, "A", ATTRIBUTES),
                         ent(3, "B", ATTRIBUTES), ent(4, "A", ATTRIBUTES)])
    assert batches(delivery) == [[1, 3], [2], [4]]


def test_telemetry_run_of_one_device_is_unbounded_per_device():
    delivery = batching([ent(n, "A") for n in range(1, 8)] + [ent(8, "B")])
    assert batches(delivery) == [[1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.mark.parametrize("topic", [RPC, CLAIM, CONNECT])
def test_non_mergeable_topic_goes_alone(topic):
    delivery = batching([ent(1, "A", topic), ent(2, "A", topic), ent(3, "B"), ent(4, "C", topic),
                         ent(5, "D")])
    result = batches(delivery)
    assert sorted(sum(result, [])) == [1, 2, 3, 4, 5]
    for ids in result:
        if any(i in (1, 2, 4) for i in ids):
            assert len(ids) == 1, result
    assert [3, 5] in result  # the telemetry of B and D still share a publish
    assert result.index([1]) < result.index([2])


def test_device_skipped_for_its_topic_keeps_its_turn_and_is_first_in_the_next_batch():
    delivery = batching([ent(1, "A"), ent(2, "B", ATTRIBUTES), ent(3, "C"),
                         ent(4, "D", ATTRIBUTES)])
    ref, ids = take(delivery)
    assert ids == [1, 3]
    delivery.done(ref)
    delivery.add(ent(5, "A"))  # A stores again: it comes after B and D
    assert batches(delivery) == [[2, 4], [5]]


def test_skipped_device_keeps_its_turn_ahead_of_a_device_that_was_in_the_batch():
    delivery = batching([ent(1, "A"), ent(2, "A", ATTRIBUTES), ent(3, "B", CLAIM), ent(4, "C")])
    ref, ids = take(delivery)
    assert ids == [1, 4]
    delivery.done(ref)
    assert next(iter(delivery.ring)) == "B"
    assert batches(delivery) == [[3], [2]]


def test_blocked_devices_are_parked_until_resumed():
    delivery = batching([ent(1, "A"), ent(2, "B"), ent(3, "C"), ent(4, "B")])
    asked = []

    def blocked(device):
        asked.append(device)
        return device == "B"
    ref, ids = take(delivery, blocked)
    assert ids == [1, 3]
    assert asked.count("B") == 1
    assert "B" not in delivery.ring and queued(delivery, "B") == [2, 4]
    delivery.done(ref)
    delivery.add(ent(5, "A"))
    assert batches(delivery) == [[5]]  # B stays parked without being asked again
    delivery.resume("B")
    assert batches(delivery) == [[2, 4]]


def test_a_blocked_first_device_does_not_decide_the_topic():
    delivery = batching([ent(1, "A", ATTRIBUTES), ent(2, "B"), ent(3, "C")])
    ref, ids = take(delivery, lambda device: device == "A")
    assert ids == [2, 3]


def test_all_devices_blocked_gives_an_empty_batch():
    delivery = batching([ent(1, "A"), ent(2, "B")])
    ref, ids = take(delivery, lambda device: True)
    assert ids == [] and delivery.in_flight == {} and delivery.count == 2
    delivery.resume("A")
    delivery.resume("B")
    assert batches(delivery) == [[1, 2]]


def test_entries_of_a_split_batch_go_one_per_publish_then_batching_resumes():
    delivery = batching([ent(1, "A"), ent(2, "A"), ent(3, "B"), ent(4, "C")])
    ref, ids = take(delivery)
    assert ids == [1, 2, 3, 4]
    assert [e.id for e in delivery.split(ref)] == [1, 2, 3, 4]
    assert delivery.solo == {1, 2, 3, 4} and delivery.in_flight == {}
    delivery.add(ent(5, "A"))
    delivery.add(ent(6, "B"))
    result = batches(delivery)
    solo = [ids for ids in result if set(ids) & {1, 2, 3, 4}]
    assert all(len(ids) == 1 for ids in solo), result
    assert len(solo) == 4
    flat = sum(result, [])
    assert sorted(flat) == [1, 2, 3, 4, 5, 6]
    for device_ids in ([1, 2, 5], [3, 6]):  # each device's order is kept
        assert [i for i in flat if i in device_ids] == device_ids
    assert sorted(result[-1]) == [5, 6]  # later entries merge again
    assert delivery.solo == set()  # done() forgets them


def test_a_solo_entry_ends_the_run_of_its_device():
    delivery = batching([ent(1, "A"), ent(2, "B")])
    ref, _ = take(delivery)
    delivery.split(ref)
    ref, ids = take(delivery)
    assert ids == [1]
    delivery.done(ref)
    delivery.add(ent(3, "C"))
    ref, ids = take(delivery)
    assert ids == [2]  # B's solo entry is alone even though C's telemetry could join
    delivery.done(ref)
    assert batches(delivery) == [[3]]


def test_split_of_unknown_ref_is_none():
    delivery = batching([ent(1)])
    assert delivery.split(999) is None
    assert delivery.solo == set()


def test_done_returns_every_entry_and_updates_count_and_bytes():
    delivery = batching([ent(1, "A", payload=b"abc"), ent(2, "B", payload=b"defgh"),
                         ent(3, "A", payload=b"ij"), ent(4, "C", ATTRIBUTES, payload=b"k")])
    assert (delivery.count, delivery.bytes) == (4, 11)
    ref, ids = take(delivery)
    assert ids == [1, 3, 2]
    assert (delivery.count, delivery.bytes) == (4, 11)  # in flight still counts
    assert [e.id for e in delivery.done(ref)] == [1, 3, 2]
    assert (delivery.count, delivery.bytes) == (1, 1)
    assert delivery.done(ref) is None
    assert (delivery.count, delivery.bytes) == (1, 1)


def test_retry_puts_a_whole_batch_back_and_it_forms_again():
    delivery = batching([ent(1, "A"), ent(2, "B"), ent(3, "A")])
    ref, ids = take(delivery)
    assert ids == [1, 3, 2]
    assert [e.id for e in delivery.retry(ref)] == [1, 3, 2]
    assert (delivery.count, queued(delivery, "A"), queued(delivery, "B")) == (3, [1, 3], [2])
    assert sorted(batches(delivery)[0]) == [1, 2, 3]


def test_requeue_all_restores_the_order_of_entries_from_several_batches():
    entries = [ent(1, "A"), ent(2, "B"), ent(3, "A"), ent(4, "C"), ent(5, "B"), ent(6, "A")]
    delivery = batching(entries, max_batch=2)
    taken = [take(delivery)[1] for _ in range(3)]
    assert sorted(sum(taken, [])) == [1, 2, 3, 4, 5, 6]
    assert len(delivery.in_flight) == 3
    delivery.add(ent(7, "A"))
    delivery.add(ent(8, "C"))
    delivery.requeue_all()
    assert delivery.in_flight == {}
    assert (queued(delivery, "A"), queued(delivery, "B"), queued(delivery, "C")) == (
        [1, 3, 6, 7], [2, 5], [4, 8])
    assert (delivery.count, delivery.bytes) == (8, 32)
    flat = sum(batches(delivery), [])
    assert sorted(flat) == list(range(1, 9))
    for device_ids in ([1, 3, 6, 7], [2, 5], [4, 8]):
        assert [i for i in flat if i in device_ids] == device_ids


def test_rename_of_a_device_with_entries_in_an_in_flight_batch():
    delivery = batching([ent(1, "A", payload=b"aaaa"), ent(2, "B", payload=b"bbbb")])
    ref, ids = take(delivery)
    assert ids == [1, 2]
    delivery.add(ent(3, "A", payload=b"cccc"))
    delivery.rename("A", "Zed", lambda e: b"renamed-%d" % e.id)
    batch = delivery.in_flight[ref][0]
    assert [(e.id, e.device, e.payload) for e in batch] == [
        (1, "Zed", b"renamed-1"), (2, "B", b"bbbb")]
    assert "A" not in delivery.queues and "A" not in delivery.ring
    assert queued(delivery, "Zed") == [3]
    assert delivery.queues["Zed"][0].payload == b"renamed-3"
    assert (delivery.count, delivery.bytes) == (3, 9 + 4 + 9)
    assert delivery.devices_in_flight() == {"Zed", "B"}
    delivery.retry(ref)  # e.g. PUBACK 0x97: the renamed entry goes again under the new name
    assert queued(delivery, "Zed") == [1, 3] and queued(delivery, "B") == [2]
    flat = sum(batches(delivery), [])
    assert sorted(flat) == [1, 2, 3] and flat.index(1) < flat.index(3)
    assert (delivery.count, delivery.bytes) == (0, 0)


def test_drop_device_forgets_its_queued_entries_but_not_its_batch_in_flight():
    delivery = batching([ent(1, "A"), ent(2, "B"), ent(3, "A", ATTRIBUTES)])
    ref, ids = take(delivery)
    assert ids == [1, 2]
    ref2, split = take(delivery)
    delivery.split(ref2)
    assert [e.id for e in delivery.drop_device("A")] == [3]
    assert delivery.solo == set()
    assert (delivery.count, delivery.bytes) == (2, 8)
    assert [e.id for e in delivery.done(ref)] == [1, 2]
    assert (delivery.count, delivery.bytes) == (0, 0)


def test_oldest_covers_every_entry_of_a_batch_in_flight():
    delivery = batching([ent(1, "A", created=NOW + 1), ent(2, "B", created=NOW + 2)])
    ref, ids = take(delivery, lambda device: device == "A")  # A waits for its connect
    assert ids == [2]
    delivery.done(ref)
    delivery.add(ent(3, "B", created=NOW + 3))
    delivery.resume("A")  # connected: A is back in turn, behind B
    ref, ids = take(delivery)
    assert ids == [3, 1]
    assert delivery.oldest() == NOW + 1  # entry 1 is still waiting for its PUBACK


# == GatewayCore with max_batch ============================================================

NAMES = ["Dev %d" % n for n in range(5)] + ['Gerät "7"']
DEVICES = {"tok%d" % n: Device(name, "thermo") for n, name in enumerate(NAMES)}
TOKENS = list(DEVICES)

_outbox_ids = itertools.count(5000)


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def data_publishes(actions):
    return [a for a in actions if isinstance(a, Publish) and a.topic != CONNECT]


def make_core(**settings):
    options = dict(puback_timeout=10, idle_timeout=600, window=10, max_batch=100)
    options.update(settings)
    return GatewayCore(core_config(**options), DEVICES.get)


def request(ref, token, body, feature="telemetry"):
    payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return Request(ref, codes.POST, ("api", "v1", token, feature), payload)


_req_refs = itertools.count(1)


def post(core, token, body, feature="telemetry", now=NOW):
    """A device uplink; returns its Store (not yet written)."""
    [store] = handled(core, request(next(_req_refs), token, body, feature), now)
    assert isinstance(store, Store), store
    return store


def write(core, stores, now=NOW):
    """Play the outbox: write ``stores`` in one commit. Returns (ids, the core's answer)."""
    ids = [next(_outbox_ids) for _ in stores]
    answer = core.on_stored([(s.ref, i) for s, i in zip(stores, ids)], now)
    assert len(of(answer, Reply)) == len(stores)
    assert all(r.code == codes.CREATED for r in of(answer, Reply))
    return ids, answer


def ready_core(tokens=TOKENS, **settings):
    """A core with the link up and every device of ``tokens`` connected upstream."""
    core = make_core(**settings)
    core.on_link_up(NOW)
    _, answer = write(core, [post(core, t, {"warmup": 1}) for t in tokens])
    todo = [p for p in answer if isinstance(p, Publish)]
    assert len(of(todo, Publish)) == len(tokens) and all(p.topic == CONNECT for p in todo)
    while todo:
        publish = todo.pop(0)
        todo += of(core.on_published(publish.ref, 0, NOW), Publish)
    assert core.outbox.delivery.count == 0 and core.outbox.delivery.in_flight == {}
    assert all(core.devices.get(DEVICES[t].name).connected for t in tokens)
    core.outbox.stats["delivered"] = 0  # count the test's own deliveries
    return core


def expected_doc(stores):
    """What one merged publish of ``stores`` must carry, built by decoding each payload."""
    doc = {}
    for store in stores:
        for device, data in json.loads(store.entry.payload).items():
            if isinstance(data, list):
                doc.setdefault(device, []).extend(data)
            else:
                doc[device] = data
    return doc


def test_stored_uplinks_of_several_devices_go_as_one_telemetry_publish():
    core = ready_core()
    stores = [post(core, t, {"ts": 1000 + n, "values": {"n": n}}) for n, t in enumerate(TOKENS)]
    stores.append(post(core, TOKENS[0], [{"ts": 2000, "values": {"n": 99}}, {"late": True}]))
    ids, answer = write(core, stores)
    [publish] = of(answer, Publish)
    assert publish.topic == TELEMETRY
    doc = json.loads(publish.payload.decode("utf-8"))
    assert doc == expected_doc(stores)
    assert list(doc) == NAMES
    assert [e["values"] for e in doc["Dev 0"]] == [{"n": 0}, {"n": 99}, {"late": True}]
    assert doc['Gerät "7"'] == [{"ts": 1005, "values": {"n": 5}}]


def test_uplinks_kept_as_the_devices_wrote_them_merge_into_valid_json():
    core = ready_core()
    bodies = [b'{ "a" : 1 ,\n "s": "]}" }', b'{"b":[1, {"c": null}], "d": "\\u00e4"}',
              b' {"e": 2.50}\r\n']
    stores = [post(core, t, body) for t, body in zip(TOKENS, bodies)]
    stores.append(post(core, TOKENS[0], b'{"f":true}'))
    stores.append(post(core, TOKENS[3], {"fw": " x "}, "attributes"))
    ids, answer = write(core, stores)
    telemetry, attributes = of(answer, Publish)
    doc = json.loads(telemetry.payload)
    assert doc == expected_doc(stores[:4])
    assert [[e["values"] for e in entries] for entries in doc.values()] == [
        [{"a": 1, "s": "]}"}, {"f": True}], [{"b": [1, {"c": None}], "d": "\u00e4"}],
        [{"e": 2.5}]]
    assert json.loads(attributes.payload) == {"Dev 3": {"fw": " x "}}


def test_one_puback_of_a_batch_deletes_every_entry_once():
    core = ready_core()
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS)]
    ids, answer = write(core, stores)
    [publish] = of(answer, Publish)
    assert core.on_published(publish.ref, 0, NOW) == [Delete(tuple(ids))]
    assert core.stats["delivered"] == len(TOKENS)
    assert (core.outbox.delivery.count, core.outbox.delivery.bytes) == (0, 0)
    assert core.on_published(publish.ref, 0, NOW) == []  # a duplicate PUBACK
    assert core.stats["delivered"] == len(TOKENS)


def test_attributes_of_several_devices_share_a_publish_one_per_device():
    core = ready_core()
    stores = [post(core, TOKENS[0], {"fw": "1"}, "attributes"),
              post(core, TOKENS[1], {"fw": "2"}, "attributes"),
              post(core, TOKENS[0], {"fw": "3"}, "attributes")]
    ids, answer = write(core, stores)
    first, second = of(answer, Publish)
    assert first.topic == second.topic == ATTRIBUTES
    assert json.loads(first.payload) == {"Dev 0": {"fw": "1"}, "Dev 1": {"fw": "2"}}
    assert json.loads(second.payload) == {"Dev 0": {"fw": "3"}}
    assert core.on_published(first.ref, 0, NOW) == [Delete((ids[0], ids[1]))]
    assert core.on_published(second.ref, 0, NOW) == [Delete((ids[2],))]


def test_a_devices_telemetry_does_not_overtake_its_attributes_in_the_core():
    core = ready_core()
    stores = [post(core, TOKENS[0], {"n": 1}), post(core, TOKENS[0], {"a": 2}, "attributes"),
              post(core, TOKENS[0], {"n": 3}), post(core, TOKENS[1], {"n": 4})]
    ids, answer = write(core, stores)
    sent = of(answer, Publish)
    assert [p.topic for p in sent] == [TELEMETRY, ATTRIBUTES, TELEMETRY]
    assert json.loads(sent[0].payload) == expected_doc([stores[0], stores[3]])
    assert json.loads(sent[2].payload) == expected_doc([stores[2]])


def test_refused_batch_is_sent_again_one_entry_per_publish_and_only_the_bad_one_is_set_aside():
    core = ready_core()
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS[:3])]
    ids, answer = write(core, stores)
    [batch] = of(answer, Publish)
    actions = core.on_published(batch.ref, 0x99, NOW)
    assert of(actions, DeadLetter) == [] and of(actions, Delete) == []
    [log] = of(actions, Log)
    assert log.level == "warn" and "0x99" in text(log) and "3" in text(log)
    alone = of(actions, Publish)
    assert [p.payload for p in alone] == [s.entry.payload for s in stores]  # each as stored
    assert all(p.topic == TELEMETRY and p.ref != batch.ref for p in alone)
    assert [p.device for p in alone] == NAMES[:3]

    bad = core.on_published(alone[1].ref, 0x99, NOW)
    [dead] = of(bad, DeadLetter)
    assert dead.id == ids[1] and "0x99" in dead.reason
    assert of(bad, Delete) == [] and data_publishes(bad) == []
    assert core.on_published(alone[0].ref, 0, NOW) == [Delete((ids[0],))]
    assert core.on_published(alone[2].ref, 0, NOW) == [Delete((ids[2],))]
    assert (core.stats["delivered"], core.stats["dead_lettered"]) == (2, 1)
    assert core.outbox.delivery.count == 0 and core.outbox.delivery.solo == set()


def test_entries_of_a_refused_batch_go_alone_even_when_new_uplinks_arrive():
    core = ready_core(window=1)
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS[:2])]
    ids, answer = write(core, stores)
    [batch] = of(answer, Publish)
    [_, first] = core.on_published(batch.ref, 0x80, NOW)
    assert first.payload == stores[0].entry.payload
    newer = post(core, TOKENS[2], {"v": 9})
    new_ids, answer = write(core, [newer])  # the window is full
    assert of(answer, Publish) == []
    delete, second = core.on_published(first.ref, 0, NOW)
    assert delete == Delete((ids[0],)) and second.payload == stores[1].entry.payload
    delete, third = core.on_published(second.ref, 0, NOW)
    assert delete == Delete((ids[1],))
    assert third.payload == newer.entry.payload
    assert core.on_published(third.ref, 0, NOW) == [Delete(tuple(new_ids))]


def test_quota_refusal_of_a_batch_publishes_the_same_batch_again():
    core = ready_core()
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS)]
    ids, answer = write(core, stores)
    [batch] = of(answer, Publish)
    [log] = core.on_published(batch.ref, 0x97, NOW)
    assert log.level == "warn" and "quota" in text(log)
    assert core.stats["dead_lettered"] == 0 and core.outbox.delivery.solo == set()
    [again] = of(core.on_tick(NOW + 1), Publish)
    assert again.ref != batch.ref and again.topic == TELEMETRY
    assert again.payload == batch.payload
    assert core.on_published(batch.ref, 0, NOW + 1) == []  # a late PUBACK of the old ref
    assert core.on_published(again.ref, 0, NOW + 1) == [Delete(tuple(ids))]
    assert core.stats["delivered"] == len(TOKENS)


def test_link_loss_redelivers_every_batched_entry_once():
    core = ready_core(window=2, max_batch=3)
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS)]
    ids, answer = write(core, stores)
    sent = of(answer, Publish)
    assert len(sent) == 2  # 6 entries, 3 per publish, window 2
    late_ids, answer = write(core, [post(core, TOKENS[0], {"v": 10}),
                                    post(core, TOKENS[4], {"v": 14})])
    assert of(answer, Publish) == []  # the window is full
    assert core.on_link_down(NOW + 1) == []
    for publish in sent:  # PUBACKs of the lost session never come, or come late
        assert core.on_published(publish.ref, 0, NOW + 1) == []

    todo = core.on_link_up(NOW + 2)
    assert {p.topic for p in todo} == {CONNECT}
    deleted, values = [], collections.defaultdict(list)
    while todo:
        action = todo.pop(0)
        if isinstance(action, Publish):
            if action.topic == TELEMETRY:
                for device, entries in json.loads(action.payload).items():
                    values[device] += [e["values"]["v"] for e in entries]
            todo += core.on_published(action.ref, 0, NOW + 2)
        elif isinstance(action, Delete):
            deleted += action.ids
    assert sorted(deleted) == sorted(ids + late_ids)
    assert len(deleted) == len(set(deleted))
    assert values == {"Dev 0": [0, 10], "Dev 1": [1], "Dev 2": [2], "Dev 3": [3],
                      "Dev 4": [4, 14], 'Gerät "7"': [5]}
    assert core.stats["delivered"] == 8 and core.outbox.delivery.count == 0


def test_window_bounds_publishes_and_uplinks_stored_meanwhile_go_as_one_larger_batch():
    core = ready_core(window=2)
    outstanding = []
    first_ids, answer = write(core, [post(core, TOKENS[0], {"v": 0})])
    outstanding += of(answer, Publish)
    second_ids, answer = write(core, [post(core, TOKENS[1], {"v": 1})])
    outstanding += of(answer, Publish)
    assert len(outstanding) == 2
    waiting_ids, waiting = [], []
    for n, token in enumerate(TOKENS * 2):  # each uplink written on its own
        store = post(core, token, {"v": 100 + n})
        ids, answer = write(core, [store])
        assert of(answer, Publish) == []  # the window is full: they wait
        waiting_ids += ids
        waiting.append(store)
    assert of(core.on_tick(NOW + 1), Publish) == []

    actions = core.on_published(outstanding[0].ref, 0, NOW + 1)
    assert actions[0] == Delete(tuple(first_ids))
    [big] = of(actions, Publish)  # one slot freed: everything that waited, in one publish
    assert json.loads(big.payload) == expected_doc(waiting)
    assert core.on_published(outstanding[1].ref, 0, NOW + 1) == [Delete(tuple(second_ids))]
    delete = core.on_published(big.ref, 0, NOW + 1)
    [only] = delete
    assert sorted(only.ids) == sorted(waiting_ids)
    assert core.stats["delivered"] == 2 + len(waiting)


def test_window_is_never_exceeded_under_a_stream_of_uplinks():
    core = ready_core(window=3, max_batch=4)
    outstanding, delivered, sent = {}, [], []

    def track(actions):
        for publish in of(actions, Publish):
            outstanding[publish.ref] = publish
        assert len(outstanding) <= 3
        sent.extend(p for p in outstanding.values() if p not in sent)

    def acknowledge_oldest():
        ref = min(outstanding)
        actions = core.on_published(ref, 0, NOW)
        del outstanding[ref]
        delivered.extend(i for d in of(actions, Delete) for i in d.ids)
        track(actions)

    for n in range(40):
        ids, answer = write(core, [post(core, TOKENS[n % len(TOKENS)], {"v": n})])
        track(answer)
        if n % 5 == 4:  # the broker acknowledges the oldest publish now and then
            acknowledge_oldest()
    while outstanding:
        acknowledge_oldest()
    assert len(delivered) == len(set(delivered)) == 40
    sizes = [sum(len(v) for v in json.loads(p.payload).values()) for p in sent]
    assert max(sizes) == 4 and sum(sizes) == 40  # batches grew to max_batch, never past it


def test_max_batch_one_keeps_one_uplink_per_publish():
    core = ready_core(max_batch=1)
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS[:3])]
    ids, answer = write(core, stores)
    sent = of(answer, Publish)
    assert [p.payload for p in sent] == [s.entry.payload for s in stores]
    assert [p.device for p in sent] == NAMES[:3]
    assert [core.on_published(p.ref, 0, NOW) for p in sent] == [[Delete((i,))] for i in ids]


def test_entries_of_devices_not_yet_connected_wait_for_their_own_connect():
    core = make_core()
    core.on_link_up(NOW)
    stores = [post(core, t, {"v": n}) for n, t in enumerate(TOKENS[:3])]
    ids, answer = write(core, stores)
    connects = of(answer, Publish)
    assert [p.topic for p in connects] == [CONNECT] * 3  # no data before a connect is done
    more_ids, answer = write(core, [post(core, TOKENS[0], {"v": 10})])
    assert of(answer, Publish) == []  # still waiting; no second connect
    [data] = core.on_published(connects[0].ref, 0, NOW)
    assert list(json.loads(data.payload)) == ["Dev 0"]
    assert [e["values"] for e in json.loads(data.payload)["Dev 0"]] == [{"v": 0}, {"v": 10}]
    later = [of(core.on_published(c.ref, 0, NOW), Publish) for c in connects[1:]]
    assert [[list(json.loads(p.payload)) for p in ps] for ps in later] == [[["Dev 1"]],
                                                                          [["Dev 2"]]]


@pytest.mark.parametrize("feature, limit", [
    ("telemetry", 1000), ("telemetry", 20000), ("telemetry", 65536), ("attributes", 1000),
    ("attributes", 20000), ("attributes", 65536), ("telemetry", 4_000_000)])
@pytest.mark.parametrize("mqtt5", [True, False])
def test_a_batch_filling_max_bytes_never_exceeds_max_packet_size(feature, limit, mqtt5):
    core = ready_core(tokens=TOKENS[:2], max_packet_size=limit, mqtt5=mqtt5)
    budget = core.outbox.delivery.max_bytes

    def value_size(device, size):
        if feature == "attributes":
            return size - len(gateway.attributes(device, {"k": ""})[1])
        return size - len(gateway.telemetry(device, [TelemetryEntry(1, {"k": ""})])[1])

    half = budget // 2
    bodies = [{"k": "x" * value_size("Dev 0", half)},
              {"k": "y" * value_size("Dev 1", budget - half)}]
    if feature == "telemetry":
        bodies = [{"ts": 1, "values": b} for b in bodies]
    stores = [post(core, TOKENS[0], bodies[0], feature), post(core, TOKENS[1], bodies[1], feature)]
    assert sum(len(s.entry.payload) for s in stores) == budget  # the most a batch may carry
    ids, answer = write(core, stores)
    [publish] = of(answer, Publish)  # both in one publish
    assert list(json.loads(publish.payload)) == ["Dev 0", "Dev 1"]
    assert gateway.publish_packet_size(publish.topic, publish.payload, mqtt5) <= limit
