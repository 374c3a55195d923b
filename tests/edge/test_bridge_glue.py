"""The runtime glue between the CoAP edge and the core (no sockets: a Clock as reactor)."""

import pytest
import txthings.coap as txcoap
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from bridge import config as config_module
from bridge.service import Bridge


def request(remote=("10.0.0.7", 5683)):
    message = txcoap.Message(mtype=txcoap.CON, mid=1, code=txcoap.POST, payload=b"{}", token=b"t")
    message.opt.uri_path = (b"api", b"v1", b"tok", b"telemetry")
    message.remote = remote
    return message


def test_a_failing_core_releases_the_requests_slot_for_its_address():
    bridge = Bridge(config_module.load(None, {}), Clock())

    def broken(request, now):
        raise RuntimeError("bug")
    bridge.core.on_request = broken
    with pytest.raises(RuntimeError):
        bridge.handle_coap(request())
    assert bridge.pending_by_peer == {} and bridge.requests == {} and bridge.request_peer == {}


def test_requests_in_progress_per_address_are_bounded():
    cfg = config_module.load_text("limits: {max_pending_per_peer: 2}", {})
    bridge = Bridge(cfg, Clock())
    bridge.core.on_request = lambda request, now: []  # never answered
    bridge.handle_coap(request())
    bridge.handle_coap(request())
    refused = bridge.handle_coap(request())
    assert refused.result.code == txcoap.SERVICE_UNAVAILABLE
    other = bridge.handle_coap(request(("10.0.0.8", 5683)))
    assert not other.called  # another address is not affected


def test_the_registry_file_is_read_once_per_reactor_turn(tmp_path):
    from bridge.registry import Registry
    clock = Clock()
    bridge = Bridge(config_module.load(None, {}), clock)
    path = str(tmp_path / "registry.sqlite3")
    writer = Registry(path)
    writer.add("Dev A", "tokA", "thermo")
    bridge.registry = Registry(path)
    queries = []
    bridge.registry._db.set_trace_callback(queries.append)
    assert bridge.lookup("tokA") is not None
    assert bridge.lookup("tokA") is not None  # same turn: the copy answers
    assert sum("data_version" in q for q in queries) == 1
    writer.remove("Dev A")
    assert bridge.lookup("tokA") is not None  # a removal during the turn counts from the next
    clock.advance(0)
    assert bridge.lookup("tokA") is None  # the next turn reads the file again
    assert sum("data_version" in q for q in queries) == 2


def test_a_uri_path_that_is_not_utf8_gets_4_00():
    bridge = Bridge(config_module.load(None, {}), Clock())
    message = request()
    message.opt.uri_path = (b"api", b"v1", b"\xff\xfe", b"telemetry")
    answer = bridge.handle_coap(message)
    assert answer.result.code == txcoap.BAD_REQUEST and bridge.requests == {}


# -- outbox writes off the reactor thread: group commit ------------------------------------

class HeldWriter:
    """A writer that runs each job only when the test releases it, in order."""

    def __init__(self):
        self.jobs = []

    def __call__(self, f, *args):
        waiter = Deferred()
        self.jobs.append((f, args, waiter))
        return waiter

    def release(self, error=None):
        f, args, waiter = self.jobs.pop(0)
        if error is not None:
            waiter.errback(error)
        else:
            waiter.callback(f(*args))


def writing_bridge(tmp_path):
    from bridge.edge.outbox import Outbox
    from bridge.registry import Registry
    clock = Clock()
    bridge = Bridge(config_module.load_text("limits: {device_rate: 0, peer_rate: 0}", {}), clock)
    bridge.registry = Registry(str(tmp_path / "registry.sqlite3"))
    bridge.registry.add("Dev A", "tok", "thermo")
    bridge.outbox = Outbox(str(tmp_path / "outbox.sqlite3"))
    bridge.run_blocking = writer = HeldWriter()
    return bridge, clock, writer


def uplink(bridge, mid):
    message = request()
    message.mid, message.payload = mid, b'{"n": %d}' % mid
    return bridge.handle_coap(message)


def test_uplinks_arriving_during_a_write_go_together_in_the_next_one(tmp_path):
    bridge, clock, writer = writing_bridge(tmp_path)
    first = uplink(bridge, 1)
    clock.advance(0)
    assert len(writer.jobs) == 1 and not first.called  # answered only once written
    later = [uplink(bridge, 2), uplink(bridge, 3)]
    clock.advance(0)
    assert len(writer.jobs) == 1  # they wait for the running write
    writer.release()
    assert first.result.code == txcoap.CREATED
    assert not any(d.called for d in later)
    [(_, (rows, deletes, dead, _now), _)] = writer.jobs
    assert len(rows) == 2 and deletes == [] and dead == []  # both in one transaction
    writer.release()
    assert [d.result.code for d in later] == [txcoap.CREATED] * 2
    assert bridge.outbox.stats()[0] == 3 and writer.jobs == []


def test_flush_fires_once_everything_handed_over_before_it_is_written(tmp_path):
    bridge, clock, writer = writing_bridge(tmp_path)
    uplink(bridge, 1)
    clock.advance(0)
    uplink(bridge, 2)  # not handed over yet: the write of uplink 1 runs
    flushed = bridge.flush()
    writer.release()
    assert not flushed.called  # uplink 2 is being written now
    writer.release()
    assert flushed.called and bridge.outbox.stats()[0] == 2


def test_flush_with_nothing_to_write_fires_at_once(tmp_path):
    bridge, clock, writer = writing_bridge(tmp_path)
    assert bridge.flush().called and writer.jobs == []


def test_a_failed_write_answers_5_03_and_the_next_write_goes_ahead(tmp_path):
    import sqlite3
    bridge, clock, writer = writing_bridge(tmp_path)
    failed = uplink(bridge, 1)
    clock.advance(0)
    writer.release(sqlite3.OperationalError("disk I/O error"))
    assert failed.result.code == txcoap.SERVICE_UNAVAILABLE
    again = uplink(bridge, 2)
    clock.advance(0)
    writer.release()
    assert again.result.code == txcoap.CREATED and bridge.outbox.stats()[0] == 1


def test_removals_of_a_failed_write_go_with_the_next_one(tmp_path):
    import sqlite3
    bridge, clock, writer = writing_bridge(tmp_path)
    [stored] = bridge.outbox.append([("Dev A", "thermo", "v1/gateway/telemetry", b"{}", 1.0)])
    bridge._deletes.append(stored)
    bridge._schedule_commit()
    clock.advance(0)
    writer.release(sqlite3.OperationalError("database is locked"))
    assert writer.jobs == [] and bridge.outbox.stats()[0] == 1  # kept for the next write
    uplink(bridge, 1)
    clock.advance(0)
    [(_, (rows, deletes, _, _), _)] = writer.jobs
    assert deletes == [stored] and len(rows) == 1
    writer.release()
    assert [e.device for e in bridge.outbox.load()] == ["Dev A"] and bridge.outbox.stats()[0] == 1
