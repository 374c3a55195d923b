"""Tests of the delivery order of stored uplinks (bridge.core.delivery.Delivery)."""

import itertools


from bridge.core.delivery import Delivery, Entry

NOW = 1_700_000_000.5


def entry(entry_id, device="A", payload=None, created=None):
    payload = b"x" * entry_id if payload is None else payload
    return Entry(entry_id, device, "thermo", "v1/gateway/telemetry", payload,
                 NOW + entry_id if created is None else created)


def make(window=100, entries=()):
    delivery = Delivery(window)
    for item in entries:
        delivery.add(item)
    return delivery


_refs = itertools.count(1)


def take_next(delivery, now=NOW):
    """Take the next publish of one entry; returns (publish ref, entry) or None."""
    ref = next(_refs)
    batch = delivery.take_batch(ref, now)
    if not batch:
        return None
    assert len(batch) == 1
    return ref, batch[0]


def drain(delivery, limit=1000):
    """Take entries while there are any (ignoring the window); returns their ids in order."""
    ids = []
    while len(ids) < limit:
        taken = take_next(delivery)
        if taken is None:
            break
        ids.append(taken[1].id)
    return ids


def queued(delivery, device):
    return [e.id for e in delivery.queues.get(device, ())]


# -- order and turns ----------------------------------------------------------------------

def test_entries_of_one_device_are_taken_in_the_order_they_were_added():
    delivery = make(entries=[entry(3), entry(1), entry(2)])
    assert drain(delivery) == [3, 1, 2]  # the order of add, not of ids


def test_next_device_is_none_when_nothing_is_queued():
    delivery = make()
    assert delivery.next_device() is None
    delivery.add(entry(1))
    take_next(delivery)
    assert delivery.next_device() is None


def test_devices_take_turns_one_entry_each():
    delivery = make(entries=[entry(1, "A"), entry(2, "A"), entry(3, "B"), entry(4, "B"),
                             entry(5, "C")])
    assert drain(delivery) == [1, 3, 5, 2, 4]


def test_a_long_backlog_does_not_starve_devices_that_store_later():
    backlog = [entry(n, "A") for n in range(1, 101)]
    delivery = make(entries=backlog + [entry(201, "B"), entry(202, "B"), entry(301, "C")])
    order = drain(delivery)
    assert order[:6] == [1, 201, 301, 2, 202, 3]
    assert order[6:] == list(range(4, 101))


def test_a_device_that_stores_again_after_emptying_its_queue_rejoins_at_the_back():
    delivery = make(entries=[entry(1, "A"), entry(2, "B"), entry(3, "B")])
    assert take_next(delivery)[1].id == 1  # A is empty now
    delivery.add(entry(4, "A"))
    assert drain(delivery) == [2, 4, 3]


# -- the window ---------------------------------------------------------------------------

def test_has_room_until_window_entries_are_in_flight():
    delivery = make(window=2, entries=[entry(n) for n in range(1, 5)])
    assert delivery.has_room()
    ref1, _ = take_next(delivery)
    assert delivery.has_room()
    take_next(delivery)
    assert not delivery.has_room()
    delivery.done(ref1)
    assert delivery.has_room()


def test_done_returns_the_entry_once():
    delivery = make(entries=[entry(1)])
    ref, first = take_next(delivery)
    assert delivery.done(ref) == [first]
    assert delivery.done(ref) is None
    assert delivery.in_flight == {}


# -- retry and requeue ---------------------------------------------------------------------

def test_retry_puts_the_entry_back_at_the_head_of_its_device_queue():
    delivery = make(entries=[entry(1), entry(2), entry(3)])
    ref, _ = take_next(delivery)
    assert [e.id for e in delivery.retry(ref)] == [1]
    assert ref not in delivery.in_flight
    assert drain(delivery) == [1, 2, 3]


def test_retry_of_a_devices_only_entry_gives_the_device_a_turn_again():
    delivery = make(entries=[entry(1, "A")])
    ref, _ = take_next(delivery)
    assert delivery.next_device() is None
    delivery.retry(ref)
    assert delivery.next_device() == "A"


def test_retry_and_done_of_unknown_ref_are_none():
    delivery = make(entries=[entry(1)])
    assert delivery.retry(999) is None
    assert delivery.done(999) is None
    assert (delivery.count, queued(delivery, "A")) == (1, [1])


def test_entries_retried_in_send_order_keep_their_original_order():
    delivery = make(entries=[entry(1), entry(2), entry(3)])
    ref1, _ = take_next(delivery)
    ref2, _ = take_next(delivery)
    delivery.retry(ref1)
    delivery.retry(ref2)
    assert queued(delivery, "A") == [1, 2, 3]


def test_requeue_all_restores_the_original_order_ahead_of_queued_entries():
    delivery = make(entries=[entry(1, "A"), entry(2, "B"), entry(3, "A"), entry(4, "B"),
                             entry(5, "A")])
    for _ in range(4):
        take_next(delivery)  # 1, 2, 3, 4 in flight; 5 queued
    delivery.requeue_all()
    assert delivery.in_flight == {}
    assert (queued(delivery, "A"), queued(delivery, "B")) == ([1, 3, 5], [2, 4])
    assert sorted(drain(delivery)) == [1, 2, 3, 4, 5]


def test_requeue_all_gives_every_requeued_device_a_turn():
    delivery = make(entries=[entry(1, "A"), entry(2, "B")])
    take_next(delivery)
    take_next(delivery)
    assert delivery.next_device() is None
    delivery.requeue_all()
    assert sorted(drain(delivery)) == [1, 2]


def test_requeue_all_after_a_retry_keeps_the_original_order():
    delivery = make(entries=[entry(1), entry(2), entry(3)])
    ref1, _ = take_next(delivery)
    take_next(delivery)
    delivery.retry(ref1)  # e.g. PUBACK 0x97 for entry 1 while entry 2 is in flight
    delivery.requeue_all()  # then the link drops
    assert queued(delivery, "A") == [1, 2, 3]


# -- bookkeeping --------------------------------------------------------------------------

def test_count_and_bytes_cover_queued_and_in_flight_entries_until_done():
    delivery = make(entries=[entry(1, payload=b"abc"), entry(2, payload=b"defgh")])
    assert (delivery.count, delivery.bytes) == (2, 8)
    ref, _ = take_next(delivery)
    assert (delivery.count, delivery.bytes) == (2, 8)  # in flight still counts
    delivery.retry(ref)
    delivery.requeue_all()
    assert (delivery.count, delivery.bytes) == (2, 8)
    ref, _ = take_next(delivery)
    delivery.done(ref)
    assert (delivery.count, delivery.bytes) == (1, 5)
    delivery.done(ref)  # a second PUBACK changes nothing
    assert (delivery.count, delivery.bytes) == (1, 5)


def test_oldest_is_the_earliest_creation_time_queued_or_in_flight():
    delivery = make()
    assert delivery.oldest() is None
    delivery.add(entry(1, "A", created=NOW + 5))
    delivery.add(entry(2, "B", created=NOW + 1))
    delivery.add(entry(3, "B", created=NOW + 9))
    assert delivery.oldest() == NOW + 1
    take_next(delivery)  # A's entry
    ref, taken = take_next(delivery)  # B's oldest, now in flight
    assert taken.id == 2 and delivery.oldest() == NOW + 1
    delivery.done(ref)
    assert delivery.oldest() == NOW + 5


def test_oldest_in_flight_is_the_earliest_send_time():
    delivery = make(entries=[entry(1), entry(2)])
    assert delivery.oldest_in_flight() is None
    ref1, _ = take_next(delivery, NOW + 3)
    take_next(delivery, NOW + 7)
    assert delivery.oldest_in_flight() == NOW + 3
    delivery.done(ref1)
    assert delivery.oldest_in_flight() == NOW + 7


# -- park and resume (a device waiting for its connect) -------------------------------------
# A device whose turn is taken (next_device, or a batch that finds it blocked) and not used
# is parked: it has no turn until resume.

def test_parked_device_gets_no_turn_until_resumed():
    delivery = make(entries=[entry(1, "A"), entry(2, "B"), entry(3, "B")])
    assert delivery.next_device() == "A"
    assert drain(delivery) == [2, 3]
    assert delivery.next_device() is None
    delivery.resume("A")
    assert drain(delivery) == [1]


def test_resume_of_a_device_without_entries_gives_it_no_turn():
    delivery = make()
    delivery.resume("A")
    assert delivery.next_device() is None
    assert "A" not in delivery.ring


def test_resume_twice_gives_one_turn_per_round():
    delivery = make(entries=[entry(1, "A"), entry(2, "A"), entry(3, "B"), entry(4, "B")])
    assert delivery.next_device() == "A"
    delivery.resume("A")
    delivery.resume("A")
    assert drain(delivery) == [3, 1, 4, 2]


# -- rename ------------------------------------------------------------------------------

def test_rename_moves_queued_entries_under_the_new_name_in_order():
    delivery = make(entries=[entry(1, "A"), entry(2, "A"), entry(3, "C")])
    delivery.rename("A", "Z")
    assert "A" not in delivery.queues
    assert queued(delivery, "Z") == [1, 2]
    devices = []
    while True:
        taken = take_next(delivery)
        if taken is None:
            break
        devices.append(taken[1].device)
    assert devices == ["C", "Z", "Z"]


def test_rename_puts_the_old_entries_before_those_stored_under_the_new_name():
    delivery = make(entries=[entry(1, "A"), entry(2, "Z")])
    delivery.rename("A", "Z")
    assert queued(delivery, "Z") == [1, 2]


def test_rename_of_a_device_without_queued_entries_changes_nothing():
    delivery = make(entries=[entry(1, "C")])
    delivery.rename("A", "Z")
    assert list(delivery.queues) == ["C"]
    assert drain(delivery) == [1]


def test_entry_in_flight_during_rename_is_retried_at_the_head_of_the_new_name():
    delivery = make(entries=[entry(1, "A"), entry(2, "A")])
    ref, _ = take_next(delivery)
    delivery.rename("A", "Z")
    delivery.retry(ref)
    assert "A" not in delivery.queues
    assert queued(delivery, "Z") == [1, 2]
