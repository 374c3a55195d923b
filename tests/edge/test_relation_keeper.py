"""Observe relations kept in DATA_DIR and taken over by the next process (glue/relations.py
over edge/relations.py): a real SQLite file, the real core, a Clock as reactor and a
transport that records what it is told to send."""

import os
import sqlite3

from twisted.internet.task import Clock

from bridge import startup_checks
from bridge.coap.datagram import Observation
from bridge.core import codes
from bridge.core.actions import Device, Notify, Request
from bridge.core.session import GatewayCore
from bridge.edge import relations as files
from bridge.edge.relations import Kept, RelationFile
from bridge.glue.relations import RelationKeeper

NOW = 1_700_000_000.0
DEVICES = {"tok-a": Device("Dev A", "default"), "tok-b": Device("Dev B", "default")}
SHAPE = files.shape_of(2, "127.0.0.1", 5683)


class Transport:
    def __init__(self):
        self.ended = []  # (peer, token, code, diagnostic, max_age)

    def end_observation(self, peer, token, code, diagnostic, max_age=None):
        self.ended.append((peer, token, codes.dotted(code), diagnostic.decode(), max_age))


class Process:
    """One process's core and keeper on ``path`` (a worker, or its successor)."""

    def __init__(self, path, devices=DEVICES, shape=SHAPE, adopts=None, max_observers=None):
        text = "coap: {max_observers: %d}" % max_observers if max_observers else ""
        self.config = startup_checks.load_text(text, {})
        self.clock = Clock()
        self.clock.advance(NOW)
        self.core = GatewayCore(self.config, devices.get)
        names = {device.name: device for device in devices.values()}
        self.applied = []
        self.keeper = RelationKeeper(self.core, self.clock, names.get, self.applied.extend,
                                     path, shape, adopts)
        self.transport = Transport()
        self.core.on_link_up(NOW)

    def start(self):
        self.keeper.start(self.transport)
        return self

    def observe(self, ref, token, feature="rpc", remote=("10.0.0.1", 40001), confirmable=True,
                dev_token="tok-a", block2=None, observe=0):
        request = Request(ref, codes.GET, ("api", "v1", dev_token, feature), observe=observe,
                          token=token, remote=remote, block2=block2,
                          observation=Observation(confirmable, NOW))
        return self.core.on_request(request, NOW)


def kept_rows(path):
    file = RelationFile(path)
    try:
        return file.shape(), file.load()
    finally:
        file.close()


def test_relations_are_written_once_per_turn_at_registration_and_end_never_per_notification(
        tmp_path):
    path = str(tmp_path / "observers-w1.sqlite3")
    process = Process(path).start()
    writes = []
    real = process.keeper.file.write
    process.keeper.file.write = lambda *args: (writes.append(args), real(*args))[1]
    process.observe(1, b"\x01", "rpc", ("10.0.0.1", 40001))
    process.observe(2, b"\x02", "rpc", ("10.0.0.2", 40002), confirmable=False,
                    dev_token="tok-b", block2=(0, 256))
    assert writes == []  # at the end of the turn
    process.clock.advance(0)
    assert len(writes) == 1  # both in one transaction
    assert kept_rows(path) == (SHAPE, [
        Kept("Dev A", "rpc", "10.0.0.1", 40001, b"\x01", True, 1024),
        Kept("Dev B", "rpc", "10.0.0.2", 40002, b"\x02", False, 256)])
    rpc = b'{"device": "Dev A", "data": {"id": 1, "method": "m", "params": {}}}'
    for n in range(5):
        [notify] = [a for a in process.core.on_message("v1/gateway/rpc", rpc, NOW)
                    if isinstance(a, Notify)]
        process.core.on_notified(notify.ref, "ack", NOW)
    process.clock.advance(0)
    assert len(writes) == 1  # notifications write nothing
    process.observe(3, b"\x02", "rpc", ("10.0.0.2", 40002), dev_token="tok-b", observe=1)
    process.clock.advance(0)
    assert len(writes) == 2
    assert [k.device for k in kept_rows(path)[1]] == ["Dev A"]
    process.keeper.stop()


def test_the_next_process_takes_the_relations_over_and_its_first_notification_goes_con(
        tmp_path):
    path = str(tmp_path / "observers-w1.sqlite3")
    first = Process(path).start()
    first.observe(1, b"\x0a", "rpc", ("10.0.0.1", 40001), confirmable=False)
    first.clock.advance(0)  # then killed: nothing more runs in it
    successor = Process(path).start()
    assert successor.transport.ended == [] and successor.keeper.restored == 1
    relation = successor.core.subscriptions.observers.get("Dev A", "rpc")
    assert (relation.remote, relation.token, relation.block_size) == (
        ("10.0.0.1", 40001), b"\x0a", 1024)
    assert relation.observation.confirmable is False  # a NON registration stays NON...
    layer_sends_con = NOW - relation.observation.last_con >= \
        successor.config.coap.con_notification_interval
    assert layer_sends_con  # ...but its first notification goes CON (a gone peer is found)
    rpc = b'{"device": "Dev A", "data": {"id": 5, "method": "m", "params": {}}}'
    [notify] = [a for a in successor.core.on_message("v1/gateway/rpc", rpc, NOW)
                if isinstance(a, Notify)]
    assert notify.remote == ("10.0.0.1", 40001) and notify.token == b"\x0a"
    # taking over wrote nothing; the file still holds the relation for the next one
    successor.keeper.stop()
    assert [k.token for k in kept_rows(path)[1]] == [b"\x0a"]


def test_relations_of_a_device_gone_from_the_registry_or_beyond_the_limit_are_ended(tmp_path):
    path = str(tmp_path / "observers.sqlite3")
    first = Process(path).start()
    first.observe(1, b"\x01", "rpc", ("10.0.0.1", 40001))
    first.observe(2, b"\x02", "rpc", ("10.0.0.2", 40002), dev_token="tok-b")
    first.clock.advance(0)
    successor = Process(path, devices={"tok-a": DEVICES["tok-a"]}).start()
    assert successor.transport.ended == [
        (("10.0.0.2", 40002), b"\x02", "4.01", "the device is no longer registered", None)]
    assert [k.device for k in kept_rows(path)[1]] == ["Dev A"]
    successor.keeper.stop()
    full = Process(path, max_observers=1)
    full.observe(3, b"\x03", "rpc", ("10.0.0.3", 40003), dev_token="tok-b")  # takes the room
    full.start()
    assert full.transport.ended == [
        (("10.0.0.1", 40001), b"\x01", "5.03", "observer limit reached", 1)]


def test_relations_written_under_another_worker_count_are_ended_with_5_03(tmp_path):
    path = str(tmp_path / "observers-w1.sqlite3")
    first = Process(path).start()
    first.observe(1, b"\x01", "rpc", ("10.0.0.1", 40001))
    first.observe(2, b"\x02", "rpc", ("10.0.0.2", 40002), dev_token="tok-b")
    first.clock.advance(0)
    successor = Process(path, shape=files.shape_of(3, "127.0.0.1", 5683)).start()
    assert sorted(successor.transport.ended) == [
        (("10.0.0.1", 40001), b"\x01", "5.03", "the bridge restarted: register again", 1),
        (("10.0.0.2", 40002), b"\x02", "5.03", "the bridge restarted: register again", 1)]
    assert successor.core.gauges()["observers"] == 0
    assert kept_rows(path) == (files.shape_of(3, "127.0.0.1", 5683), [])


def test_the_first_worker_ends_the_relations_of_workers_that_no_longer_exist(tmp_path):
    data = str(tmp_path)
    old = Process(files.path_of(data, 3), shape=files.shape_of(3, "127.0.0.1", 5683)).start()
    old.observe(1, b"\x03", "rpc", ("10.0.0.3", 40003))
    old.clock.advance(0)
    old.keeper.stop()
    single = Process(files.path_of(data, 0), shape=files.shape_of(1, "127.0.0.1", 5683),
                     adopts=(data, 1)).start()
    assert single.transport.ended == [
        (("10.0.0.3", 40003), b"\x03", "5.03", "the bridge restarted: register again", 1)]
    assert not [name for name in os.listdir(data) if name.startswith("observers-w3")]
    single.keeper.stop()


def test_relations_over_dtls_are_not_kept(tmp_path):
    class Session:  # a DTLS session as the transport's peer
        key = "s1"
        address = ("10.0.0.5", 40005)
    path = str(tmp_path / "observers.sqlite3")
    process = Process(path).start()
    process.core.on_request(Request(1, codes.GET, ("api", "v1", "tok-a", "rpc"), observe=0,
                                    token=b"\x05", remote=Session(),
                                    observation=Observation(True, NOW)), NOW)
    process.clock.advance(0)
    assert process.core.gauges()["observers"] == 1
    assert kept_rows(path)[1] == []


def test_a_damaged_file_is_set_aside_and_the_process_starts_without_its_relations(tmp_path):
    path = str(tmp_path / "observers.sqlite3")
    with open(path, "wb") as handle:
        handle.write(b"this is not a database" * 200)
    process = Process(path).start()
    assert process.keeper.file is not None and process.keeper.restored == 0
    assert any(name.startswith("observers.sqlite3.corrupt-") for name in os.listdir(tmp_path))
    process.observe(1, b"\x01")
    process.clock.advance(0)
    assert len(kept_rows(path)[1]) == 1


def test_a_failed_write_is_tried_again_and_loses_nothing(tmp_path):
    path = str(tmp_path / "observers.sqlite3")
    process = Process(path).start()
    real = process.keeper.file.write
    failing = [True]

    def write(*args):
        if failing[0]:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args)
    process.keeper.file.write = write
    process.observe(1, b"\x01")
    process.clock.advance(0)
    assert kept_rows(path)[1] == []
    failing[0] = False
    process.observe(2, b"\x02", dev_token="tok-b", remote=("10.0.0.2", 40002))
    process.clock.advance(5)
    assert [k.device for k in kept_rows(path)[1]] == ["Dev A", "Dev B"]
