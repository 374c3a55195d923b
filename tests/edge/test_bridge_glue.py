"""The runtime glue between the CoAP edge and the core (no sockets: a Clock as reactor)."""

import pytest
import txthings.coap as txcoap
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
