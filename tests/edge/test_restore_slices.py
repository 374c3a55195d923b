"""A restart with a large backlog: the bridge reads its real outbox in slices, not at once.

A Clock is the reactor and a fake link stands in for paho: it takes every
publish and the test acknowledges them, as a broker would.
"""

import json

from twisted.internet.task import Clock

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core.actions import Entry
from bridge.edge.outbox import Outbox
from bridge.glue.bridge import Bridge

TOPIC = "v1/gateway/telemetry"
ROWS = 12_000  # more than two slices of the default 5,000


class FakeLink:
    connected = True
    failed_messages = 0  # read by the metrics

    def __init__(self):
        self.sent = []  # (mid, topic, payload) not acknowledged yet
        self._mid = 0

    def publish(self, topic, payload):
        self._mid += 1
        self.sent.append((self._mid, topic, payload))
        return self._mid

    def reset(self):
        raise AssertionError("no PUBACK is late here")


def backlog_bridge(tmp_path):
    path = str(tmp_path / "outbox.sqlite3")
    writer = Outbox(path)
    rows = [Entry(0, "Dev %d" % (n % 7), "thermo", TOPIC,
                  json.dumps({"Dev %d" % (n % 7): [{"ts": 1, "values": {"n": n}}]}).encode(), 1.0)
            for n in range(ROWS)]
    writer.append(rows)
    writer.close()
    clock = Clock()
    clock.advance(1_700_000_000)
    bridge = Bridge(startup_checks.load_text("outbox: {max_batch: 50}", {}), clock)
    bridge.link = FakeLink()
    bridge.outbox_commit.attach(Outbox(path))
    return bridge, clock


def test_a_restart_reads_a_large_backlog_in_slices_and_delivers_every_entry_in_order(tmp_path):
    bridge, clock = backlog_bridge(tmp_path)
    bridge.outbox_commit.restore()
    clock.advance(0)  # the first slice is read on the next turn
    assert 0 < bridge.core.outbox.delivery.count < ROWS  # not the whole backlog at once
    slice_rows = bridge.core.outbox.slice_rows
    assert bridge.core.outbox.delivery.count <= slice_rows < ROWS
    assert bridge.metrics.values()["outbox_entries"][2] == ROWS  # the rest is on disk, and counts
    bridge.link_up()
    delivered, most_in_memory = [], 0
    for _ in range(10_000):
        most_in_memory = max(most_in_memory, bridge.core.outbox.delivery.count)
        sent, bridge.link.sent = bridge.link.sent, []
        if not sent:
            clock.advance(0)  # commits and the next slice
            if not bridge.link.sent:
                break
            continue
        for mid, topic, payload in sent:
            if topic == TOPIC:
                for device, items in json.loads(payload).items():
                    delivered += [(device, item["values"]["n"]) for item in items]
            bridge.published(mid, 0)
    assert most_in_memory <= slice_rows * 3 // 2
    assert sorted(n for _, n in delivered) == list(range(ROWS))  # each entry, once
    by_device = {}
    for device, n in delivered:
        by_device.setdefault(device, []).append(n)
    assert all(numbers == sorted(numbers) for numbers in by_device.values())
    clock.advance(0)
    assert bridge.outbox.stats() == (0, 0) and bridge.core.outbox.backlog_after is None
    bridge.outbox.close()


def test_load_slice_stops_at_the_row_or_byte_bound_and_goes_on_after_the_last_id(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite3"))
    ids = box.append([Entry(0, "Dev A", "t", TOPIC, b"x" * 100, 1.0) for _ in range(30)])
    assert [e.id for e in box.load_slice(0, 10, 1 << 20)] == ids[:10]
    assert [e.id for e in box.load_slice(ids[9], 10, 250)] == ids[10:13]  # 300 bytes >= 250
    assert [e.id for e in box.load_slice(ids[-1], 10, 1 << 20)] == []
    box.close()
