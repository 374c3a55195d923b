"""Tests of observe relations and their notification queues (bridge.core.observe.Observers)."""

from bridge.core import codes
from bridge.core.actions import Notify
from bridge.core.observe import OBSERVE_MODULUS, OBSERVE_RATE, Observers, Pending

T0 = 1_700_000_000.0
PEER = ("10.0.0.1", 5683)
OTHER_PEER = ("10.0.0.2", 5683)
NEW_PEER = ("10.0.0.1", 40000)  # same device after NAT rebinding


OBSERVATION = object()  # the transport's state of a registration: opaque to the core


def make_observers(max_relations=100):
    return Observers(max_relations)


def pending(n, item=None):
    return Pending(b'{"n":%d}' % n, codes.CONTENT, item)


def numbers(notifies):
    return [n.payload for n in notifies]


def newer(v1, v2):
    """RFC 7641 §3.4: is Observe number v2 fresher than v1 (ignoring the 128 s rule)?"""
    half = 1 << 23
    return (v1 < v2 and v2 - v1 < half) or (v1 > v2 and v1 - v2 > half)


def register(obs, device="Dev A", feature="attributes", remote=PEER, token=b"t1",
             observation=OBSERVATION):
    relation, leftovers = obs.register(device, feature, remote, token, observation)
    assert relation is not None
    return relation, leftovers


def stream(obs, notifies, now=T0, outcome="delivered"):
    """``notifies`` and every notification each one's ``outcome`` releases, in order."""
    out = list(notifies)
    for notify in out:
        released, ended, leftovers = obs.on_result(notify.ref, outcome, now)
        assert ended == [] and leftovers == []
        out += released
    return out


# -- Observe numbers --------------------------------------------------------------

def test_observe_numbers_increase_across_notifications_of_one_relation():
    obs = make_observers()
    register(obs)
    out = []
    for n in range(5):
        out += stream(obs, obs.enqueue("Dev A", "attributes", pending(n), T0 + n), T0 + n)
    values = [notify.observe for notify in out]
    assert len(values) == 5
    assert all(newer(a, b) for a, b in zip(values, values[1:]))


def test_observe_numbers_keep_increasing_across_re_registrations():
    obs = make_observers()
    relation, _ = register(obs, token=b"t1")
    first = relation.next_observe(T0)  # the registration response's number, as the core takes it
    [n1] = obs.enqueue("Dev A", "attributes", pending(1), T0)
    relation, _ = register(obs, token=b"t2")
    second = relation.next_observe(T0)
    [n2] = obs.enqueue("Dev A", "attributes", pending(2), T0)
    assert newer(first, n1.observe)
    assert newer(n1.observe, second)
    assert newer(second, n2.observe)
    assert n2.token == b"t2"


def test_observe_numbers_are_the_time_in_milliseconds_so_a_successor_sends_newer_ones():
    """A process that takes a relation over without its numbers (a restarted worker)
    numbers from the time: newer than whatever the dead one sent before (RFC 7641 §4.4)."""
    dead = make_observers()
    relation, _ = register(dead)
    assert relation.next_observe(T0) == int(T0 * OBSERVE_RATE) % OBSERVE_MODULUS
    sent = stream(dead, [n for k in range(50)
                         for n in dead.enqueue("Dev A", "attributes", pending(k), T0 + 0.5)],
                  T0 + 0.5)
    last = sent[-1].observe  # 50 in one millisecond: each one more than the one before
    assert [n.observe for n in sent] == [(sent[0].observe + k) % OBSERVE_MODULUS
                                         for k in range(50)]
    successor = make_observers()
    register(successor)  # knows nothing of the numbers sent
    [first] = successor.enqueue("Dev A", "attributes", pending(99), T0 + 2.0)
    assert newer(last, first.observe)


def test_observe_number_wraps_at_2_pow_24_and_stays_fresh_in_serial_arithmetic():
    obs = make_observers()
    register(obs)
    # three milliseconds before the time base wraps; four notifications in that millisecond
    now = (OBSERVE_MODULUS * 1000 - 3) / OBSERVE_RATE
    out = []
    for n in range(4):
        out += obs.enqueue("Dev A", "attributes", pending(n), now)
    out = stream(obs, out, now)
    values = [notify.observe for notify in out]
    assert values == [OBSERVE_MODULUS - 3, OBSERVE_MODULUS - 2, OBSERVE_MODULUS - 1, 0]
    later = stream(obs, obs.enqueue("Dev A", "attributes", pending(5), now + 0.010), now)
    values.append(later[0].observe)
    assert values[-1] == 7  # the time's number again: 10 ms later
    assert all(0 <= v < OBSERVE_MODULUS for v in values)
    assert all(newer(a, b) for a, b in zip(values, values[1:]))


# -- one notification in flight per relation ----------------------------------------

def test_a_relation_sends_only_the_first_of_three_queued_notifications():
    obs = make_observers()
    register(obs)
    out = []
    for n in range(3):
        out += obs.enqueue("Dev A", "attributes", pending(n), T0)
    [first] = out
    assert isinstance(first, Notify)
    assert first.payload == b'{"n":0}'
    assert (first.remote, first.token, first.code, first.device, first.observation) == (
        PEER, b"t1", codes.CONTENT, "Dev A", OBSERVATION)


def test_ack_releases_the_next_notification_in_order_without_loss():
    obs = make_observers()
    register(obs)
    sent = []
    for n in range(3):
        sent += obs.enqueue("Dev A", "attributes", pending(n), T0)
    while True:
        notifies, ended, leftovers = obs.on_result(sent[-1].ref, "ack", T0 + len(sent))
        assert ended == [] and leftovers == []
        if not notifies:
            break
        assert len(notifies) == 1
        sent += notifies
    assert numbers(sent) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert len({n.ref for n in sent}) == 3


def test_a_repeated_ack_for_the_same_ref_releases_nothing_more():
    obs = make_observers()
    register(obs)
    [first] = obs.enqueue("Dev A", "attributes", pending(0), T0)
    obs.enqueue("Dev A", "attributes", pending(1), T0)
    obs.enqueue("Dev A", "attributes", pending(2), T0)
    [second], _, _ = obs.on_result(first.ref, "ack", T0)
    assert obs.on_result(first.ref, "ack", T0) == ([], [], [])
    assert second.payload == b'{"n":1}'


def test_enqueue_without_a_relation_sends_nothing():
    obs = make_observers()
    assert obs.enqueue("Dev A", "attributes", pending(0), T0) == []
    register(obs, feature="rpc")
    assert obs.enqueue("Dev A", "attributes", pending(0), T0) == []


# -- delivered (a NON sent, or written to a reliable connection) ------------------------

def test_delivered_releases_the_next_notification_as_an_ack_does():
    obs = make_observers()
    register(obs)
    out = []
    for n in range(3):
        out += obs.enqueue("Dev A", "attributes", pending(n), T0 + 1)
    assert numbers(out) == [b'{"n":0}']  # the transport chooses CON or NON: one at a time
    assert numbers(stream(obs, out, T0 + 1)) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert obs.held("Dev A", "attributes") == 0


def test_a_notification_enqueued_after_the_last_was_delivered_goes_at_once():
    obs = make_observers()
    register(obs)
    [first] = obs.enqueue("Dev A", "attributes", pending(0), T0)
    assert obs.on_result(first.ref, "delivered", T0) == ([], [], [])
    [second] = obs.enqueue("Dev A", "attributes", pending(1), T0 + 1)
    assert second.payload == b'{"n":1}' and second.ref != first.ref


# -- reset and timeout ---------------------------------------------------------------------------

def test_reset_ends_only_that_relation_and_returns_its_queued_items():
    obs = make_observers()
    register(obs, feature="attributes", token=b"ta")
    register(obs, feature="rpc", token=b"tr")
    [sent] = obs.enqueue("Dev A", "rpc", pending(0, item="rpc-0"), T0)
    obs.enqueue("Dev A", "rpc", pending(1, item="rpc-1"), T0)
    obs.enqueue("Dev A", "rpc", pending(2, item="rpc-2"), T0)

    notifies, ended, leftovers = obs.on_result(sent.ref, "reset", T0 + 1)
    assert notifies == []
    assert [(r.device, r.feature) for r in ended] == [("Dev A", "rpc")]
    assert [p.item for p in leftovers] == ["rpc-0", "rpc-1", "rpc-2"]  # in flight first
    assert obs.get("Dev A", "rpc") is None
    assert obs.get("Dev A", "attributes") is not None
    assert len(obs) == 1


def test_timeout_ends_every_relation_of_that_remote_and_no_other():
    obs = make_observers()
    register(obs, device="Dev A", feature="attributes", remote=PEER)
    register(obs, device="Dev A", feature="rpc", remote=PEER)
    register(obs, device="Dev B", feature="rpc", remote=PEER)  # same peer, other device
    register(obs, device="Dev C", feature="rpc", remote=OTHER_PEER)
    obs.enqueue("Dev A", "attributes", pending(9, item="attr"), T0)
    [sent] = obs.enqueue("Dev A", "rpc", pending(0, item="rpc-0"), T0)
    obs.enqueue("Dev A", "rpc", pending(1, item="rpc-1"), T0)

    notifies, ended, leftovers = obs.on_result(sent.ref, "timeout", T0 + 100)
    assert notifies == []
    assert sorted((r.device, r.feature) for r in ended) == [
        ("Dev A", "attributes"), ("Dev A", "rpc"), ("Dev B", "rpc")]
    assert sorted(p.item for p in leftovers) == ["attr", "rpc-0", "rpc-1"]
    assert list(obs.relations) == [("Dev C", "rpc")]


def test_result_for_an_unknown_ref_does_nothing():
    obs = make_observers()
    register(obs)
    assert obs.on_result(12345, "timeout", T0) == ([], [], [])
    assert len(obs) == 1


def test_reset_of_a_notification_reported_delivered_ends_the_relation():
    obs = make_observers()
    register(obs)
    [non] = obs.enqueue("Dev A", "attributes", pending(0), T0)
    obs.on_result(non.ref, "delivered", T0)
    notifies, ended, leftovers = obs.on_result(non.ref, "reset", T0 + 1)
    assert notifies == [] and leftovers == []
    assert [(r.device, r.feature) for r in ended] == [("Dev A", "attributes")]
    assert obs.get("Dev A", "attributes") is None


def test_stale_reset_after_re_registration_with_a_new_token_does_nothing():
    obs = make_observers()
    register(obs, token=b"old")
    [non] = obs.enqueue("Dev A", "attributes", pending(0), T0)
    obs.on_result(non.ref, "delivered", T0)
    register(obs, token=b"new")
    assert obs.on_result(non.ref, "reset", T0 + 2) == ([], [], [])
    relation = obs.get("Dev A", "attributes")
    assert relation is not None and relation.token == b"new"


def test_stale_con_result_after_re_registration_does_nothing():
    obs = make_observers()
    register(obs, token=b"old")
    [con] = obs.enqueue("Dev A", "attributes", pending(0), T0)
    register(obs, token=b"new")
    for outcome in ("reset", "timeout", "ack", "delivered"):
        assert obs.on_result(con.ref, outcome, T0 + 2) == ([], [], [])
    assert obs.get("Dev A", "attributes").token == b"new"


# -- register, deregister -------------------------------------------------------------------------

def test_register_from_a_new_remote_replaces_the_relation_and_returns_its_leftovers():
    obs = make_observers()
    register(obs, feature="rpc", remote=PEER, token=b"t1")
    obs.enqueue("Dev A", "rpc", pending(0, item="a"), T0)
    obs.enqueue("Dev A", "rpc", pending(1, item="b"), T0)

    relation, leftovers = obs.register("Dev A", "rpc", NEW_PEER, b"t2", OBSERVATION)
    assert relation is not None and relation.remote == NEW_PEER and relation.token == b"t2"
    assert [p.item for p in leftovers] == ["a", "b"]
    assert len(obs) == 1
    [notify] = obs.enqueue("Dev A", "rpc", pending(2), T0 + 1)
    assert (notify.remote, notify.token) == (NEW_PEER, b"t2")


def test_register_beyond_max_relations_is_refused_for_a_new_key():
    obs = make_observers(max_relations=2)
    register(obs, device="Dev A", feature="attributes")
    register(obs, device="Dev A", feature="rpc")
    assert obs.register("Dev B", "rpc", OTHER_PEER, b"t", OBSERVATION) == (None, [])
    assert obs.get("Dev B", "rpc") is None
    assert len(obs) == 2


def test_register_at_max_relations_still_replaces_an_existing_key():
    obs = make_observers(max_relations=1)
    register(obs, remote=PEER, token=b"t1")
    relation, leftovers = obs.register("Dev A", "attributes", NEW_PEER, b"t2", None)
    assert relation is not None and relation.remote == NEW_PEER
    assert leftovers == []
    assert len(obs) == 1


def test_deregister_needs_the_registering_remote_and_token():
    obs = make_observers()
    register(obs, feature="rpc", remote=PEER, token=b"t1")
    obs.enqueue("Dev A", "rpc", pending(0, item="x"), T0)
    assert obs.deregister("Dev A", "rpc", OTHER_PEER, b"t1") == (False, [])
    assert obs.deregister("Dev A", "rpc", PEER, b"other") == (False, [])
    assert obs.deregister("Dev B", "rpc", PEER, b"t1") == (False, [])
    assert obs.get("Dev A", "rpc") is not None

    ended, leftovers = obs.deregister("Dev A", "rpc", PEER, b"t1")
    assert ended is True
    assert [p.item for p in leftovers] == ["x"]
    assert obs.get("Dev A", "rpc") is None


def test_cancel_device_ends_all_its_relations_only():
    obs = make_observers()
    register(obs, device="Dev A", feature="attributes")
    register(obs, device="Dev A", feature="rpc")
    register(obs, device="Dev B", feature="rpc")
    obs.enqueue("Dev A", "rpc", pending(0, item="x"), T0)
    assert [p.item for p in obs.cancel_device("Dev A")] == ["x"]
    assert list(obs.relations) == [("Dev B", "rpc")]


# -- rename ---------------------------------------------------------------------------------------

def test_rename_moves_relations_to_the_new_name():
    obs = make_observers()
    register(obs, device="Old", feature="attributes")
    register(obs, device="Old", feature="rpc")
    register(obs, device="Other", feature="rpc")
    obs.rename("Old", "New")
    assert obs.get("Old", "attributes") is None and obs.get("Old", "rpc") is None
    assert obs.get("New", "attributes").device == "New"
    assert obs.get("New", "rpc").device == "New"
    assert obs.get("Other", "rpc") is not None
    [notify] = obs.enqueue("New", "attributes", pending(0), T0)
    assert notify.device == "New"


def test_rename_keeps_in_flight_bookkeeping_so_ack_releases_the_next_under_the_new_name():
    obs = make_observers()
    register(obs, device="Old", feature="rpc")
    [first] = obs.enqueue("Old", "rpc", pending(0), T0)
    obs.enqueue("Old", "rpc", pending(1), T0)
    obs.rename("Old", "New")
    [second], ended, _ = obs.on_result(first.ref, "ack", T0 + 1)
    assert ended == []
    assert (second.payload, second.device) == (b'{"n":1}', "New")


def test_rename_keeps_in_flight_bookkeeping_so_reset_ends_the_renamed_relation():
    obs = make_observers()
    register(obs, device="Old", feature="rpc")
    [first] = obs.enqueue("Old", "rpc", pending(0, item="x"), T0)
    obs.rename("Old", "New")
    _, ended, leftovers = obs.on_result(first.ref, "reset", T0 + 1)
    assert [(r.device, r.feature) for r in ended] == [("New", "rpc")]
    assert [p.item for p in leftovers] == ["x"]
    assert len(obs) == 0


def test_rename_keeps_delivered_bookkeeping_so_reset_ends_the_renamed_relation():
    obs = make_observers()
    register(obs, device="Old", feature="attributes")
    [non] = obs.enqueue("Old", "attributes", pending(0), T0)
    obs.on_result(non.ref, "delivered", T0)
    obs.rename("Old", "New")
    _, ended, _ = obs.on_result(non.ref, "reset", T0 + 1)
    assert [(r.device, r.feature) for r in ended] == [("New", "attributes")]
    assert len(obs) == 0


# -- representations longer than one block (RFC 7959 §2.6) ---------------------------

def test_relation_keeps_the_latest_notification_longer_than_its_block_and_only_that():
    obs = make_observers()
    relation, _ = obs.register("Dev A", "attributes", PEER, b"t1", None, block_size=64)
    long_one = Pending(b'{"v":"' + b"x" * 100 + b'"}')
    [notify] = obs.enqueue("Dev A", "attributes", long_one, T0)
    assert notify.block_size == 64
    assert relation.last == long_one.payload
    obs.on_result(notify.ref, "delivered", T0)
    obs.enqueue("Dev A", "attributes", pending(1), T0)
    assert relation.last is None  # the device is told the short one; no blocks to fetch


def test_relation_block_size_is_the_smaller_of_the_asked_one_and_the_bridges():
    obs = make_observers()
    small, _ = obs.register("Dev A", "attributes", PEER, b"t1", None, block_size=256)
    default, _ = obs.register("Dev B", "attributes", PEER, b"t2", None)
    assert (small.block_size, default.block_size) == (256, codes.BLOCK_SIZE)
    huge, _ = obs.register("Dev C", "attributes", PEER, b"t3", None, block_size=1 << 16)
    assert huge.block_size == codes.BLOCK_SIZE


def test_cancel_remote_ends_that_remotes_relations_also_after_a_rename_and_a_replace():
    obs = make_observers()
    session = object()  # a DTLS session as the remote
    register(obs, device="Dev A", feature="attributes", remote=session)
    register(obs, device="Dev A", feature="rpc", remote=session)
    register(obs, device="Dev B", feature="rpc", remote=OTHER_PEER)
    register(obs, device="Dev C", feature="rpc", remote=PEER)
    register(obs, device="Dev C", feature="rpc", remote=session, token=b"t2")  # replaces
    obs.enqueue("Dev A", "rpc", pending(0, item="rpc-0"), T0)
    obs.rename("Dev A", "Dev A2")
    ended, leftovers = obs.cancel_remote(session)
    assert sorted((r.device, r.feature) for r in ended) == [
        ("Dev A2", "attributes"), ("Dev A2", "rpc"), ("Dev C", "rpc")]
    assert [p.item for p in leftovers] == ["rpc-0"]
    assert list(obs.relations) == [("Dev B", "rpc")]
    assert obs.cancel_remote(session) == ([], [])
    assert obs.cancel_remote(PEER) == ([], [])  # its relation was replaced by the session's
    ended, _ = obs.cancel_remote(OTHER_PEER)
    assert [r.device for r in ended] == ["Dev B"] and len(obs) == 0
