"""The outbox's backlog at start is read in bounded slices (GatewayCore.on_backlog).

A fake outbox (a dict of entries by id) answers ``LoadBacklog``; a fake broker
acknowledges every publish. Uplinks stored while the backlog is read get later
ids, as the real outbox gives them.
"""

import json

from bridge.core import codes
from bridge.core.actions import (DeadLetter, Delete, Device, LoadBacklog, Publish, Reply,
                                 Request, Store)
from bridge.core.delivery import Entry
from bridge.core.downstream import GATEWAY_RPC_REQUEST_PREFIX
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled

NOW = 1_700_000_000.5
TOPIC = "v1/gateway/telemetry"
DEVICES = {"tok%d" % n: Device("Dev %d" % n, "thermo") for n in range(5)}


def make_core(restore_rows=40, restore_bytes=1 << 20, **settings):
    options = dict(puback_timeout=10, idle_timeout=600, window=4, max_batch=10)
    options.update(settings)
    core = GatewayCore(core_config(**options), DEVICES.get)
    # slices smaller than the outbox's (outbox.RESTORE_ROWS, RESTORE_BYTES), to see several
    core.outbox.slice_rows, core.outbox.slice_bytes = restore_rows, restore_bytes
    return core


def payload(device, n):
    return json.dumps({device: [{"ts": 1, "values": {"n": n}}]}).encode()


class World:
    """The outbox on disk and a broker that acknowledges everything, played in order."""

    def __init__(self, core, count, devices=5):
        self.core = core
        self.disk = {}
        for entry_id in range(1, count + 1):
            device = "Dev %d" % (entry_id % devices)
            self.disk[entry_id] = Entry(entry_id, device, "thermo", TOPIC,
                                        payload(device, entry_id), NOW - 60)
        self.next_id = count + 1
        self.loads = []  # the LoadBacklog actions, in order
        self.delivered = []  # (device, n) in the order the broker got them
        self.dead = []
        self.most_in_memory = 0
        self.todo = []

    def play(self, actions):
        self.todo += actions
        while self.todo:
            action = self.todo.pop(0)
            self.most_in_memory = max(self.most_in_memory, self.core.outbox.delivery.count)
            if isinstance(action, LoadBacklog):
                self.loads.append(action)
                after = sorted(i for i in self.disk if i > action.after)[:action.rows]
                entries = [self.disk[i] for i in after]
                self.todo += self.core.on_restored(entries, NOW, more=bool(entries))
            elif isinstance(action, Publish):
                if action.topic == TOPIC:
                    for device, items in json.loads(action.payload).items():
                        self.delivered += [(device, item["values"]["n"]) for item in items]
                self.todo += self.core.on_published(action.ref, 0, NOW)
            elif isinstance(action, Delete):
                for entry_id in action.ids:
                    del self.disk[entry_id]
            elif isinstance(action, DeadLetter):
                self.dead.append(action.id)
                del self.disk[action.id]

    def uplink(self, ref, token, n):
        """A device sends n: the edge writes it with the next id and reports it stored."""
        request = Request(ref, codes.POST, ("api", "v1", token, "telemetry"),
                          json.dumps({"n": n}).encode())
        [store] = [a for a in handled(self.core, request, NOW) if isinstance(a, Store)]
        entry_id = self.next_id
        self.next_id += 1
        self.disk[entry_id] = Entry(entry_id, DEVICES[token].name, "thermo", TOPIC,
                                    payload(DEVICES[token].name, n), NOW)
        answer = self.core.on_stored([(store.ref, entry_id)], NOW)
        assert Reply(ref, codes.CREATED) in answer
        self.play(answer)


def in_device_order(delivered):
    by_device = {}
    for device, n in delivered:
        by_device.setdefault(device, []).append(n)
    return by_device


def test_a_large_backlog_is_read_in_slices_and_every_entry_is_delivered_in_order():
    core = make_core()
    world = World(core, 1000)
    world.play(core.on_backlog(1000, sum(len(e.payload) for e in world.disk.values()), NOW))
    assert len(world.loads) == 1 and core.outbox.delivery.count == 40  # one slice before the link
    world.play(core.on_link_up(NOW))
    assert len(world.loads) > 1000 // 40  # many slices, one after another
    assert all(load.rows == 40 for load in world.loads)
    assert world.most_in_memory <= 40 + 40 // 2  # never more than a slice and a half
    assert sorted(n for _, n in world.delivered) == list(range(1, 1001))  # each entry once
    for device, numbers in in_device_order(world.delivered).items():
        assert numbers == sorted(numbers), device
    assert world.disk == {} and core.outbox.backlog_after is None and core.outbox.delivery.count == 0


def test_uplinks_stored_while_the_backlog_is_read_wait_behind_it_on_disk():
    core = make_core()
    world = World(core, 200)
    world.play(core.on_backlog(200, sum(len(e.payload) for e in world.disk.values()), NOW))
    # before the link is up: a new uplink of Dev 1 must go after all of Dev 1's backlog
    world.uplink(1, "tok1", 10_001)
    assert core.outbox.delivery.count == 40 and core.outbox.backlog_count == 200 - 40 + 1
    world.play(core.on_link_up(NOW))
    world.uplink(2, "tok1", 10_002)  # stored after the backlog was all read: straight in
    assert core.outbox.backlog_after is None
    mine = in_device_order(world.delivered)["Dev 1"]
    assert mine[-2:] == [10_001, 10_002] and mine == sorted(mine)
    assert len(world.delivered) == 202 and world.disk == {}


def test_the_backlog_still_on_disk_counts_toward_the_outbox_bound():
    core = make_core(outbox_max_entries=100)
    world = World(core, 100)
    world.play(core.on_backlog(100, 5000, NOW))
    assert core.outbox.delivery.count == 40  # the other 60 are on disk, and count
    request = Request(1, codes.POST, ("api", "v1", "tok1", "telemetry"), b'{"n":1}')
    [reply] = [a for a in handled(core, request, NOW) if isinstance(a, Reply)]
    assert codes.dotted(reply.code) == "5.03"


def test_a_slice_is_also_bounded_in_bytes():
    core = make_core(restore_bytes=1000)
    world = World(core, 100)
    [load] = core.on_backlog(100, 10_000, NOW)
    assert load.size == 1000 and load.rows == 40


def test_backlog_entries_of_a_device_the_platform_deleted_are_set_aside_when_read():
    core = make_core()
    world = World(core, 200)
    world.play(core.on_backlog(200, 10_000, NOW))
    rpc = json.dumps({"id": 1, "method": "gateway_device_deleted", "params": "Dev 2"}).encode()
    world.play(core.on_message(GATEWAY_RPC_REQUEST_PREFIX + "1", rpc, NOW))
    world.play(core.on_link_up(NOW))
    assert "Dev 2" not in {device for device, _ in world.delivered}
    assert sorted(world.dead) == [i for i in range(1, 201) if i % 5 == 2]
    assert len(world.delivered) == 200 - 40 and world.disk == {}
