"""Batching on the wire: uplinks of many devices merged into one v1/gateway/telemetry publish.

A real mosquitto and a real bridge (twistd) with ``mqtt.max_inflight: 1``: while one
publish waits for its PUBACK, whatever the devices store meanwhile waits too and goes as
one batch, so batches are certain under concurrent load. The platform must get every
(device, value) exactly once, each device's values in the order it sent them.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import threading
import time

import pytest

import coapraw as raw
from conftest import BridgeProcess, wait_until

pytestmark = pytest.mark.integration

DEVICES = [("Batch %02d" % n, "batchtok%02d" % n) for n in range(28)] + [
    ('Gerät "7"', "batchtokq"), ("back\\slash ✓", "batchtokb")]
PER_DEVICE = 6


@pytest.fixture(scope="module")
def batch_bridge(broker, tmp_path_factory):
    process = BridgeProcess(str(tmp_path_factory.mktemp("batching")), broker.port,
                            mqtt={"max_inflight": 1}, outbox={"max_batch": 100})
    for name, token in DEVICES:
        process.add_device(name, token, "sensor")
    process.start()
    yield process
    process.stop()


def post_all(host, port, token, values, errors):
    """One device: POST ``{"v": value}`` for each value, one after another (CON, retransmitted
    with the same message ID like a CoAP client), each waiting for its 2.01."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    mid = random.randrange(65536)
    try:
        for value in values:
            mid = (mid + 1) % 65536
            msg = raw.request(raw.POST, "/api/v1/%s/telemetry" % token,
                              json.dumps({"v": value}).encode(), mid=mid,
                              token=mid.to_bytes(2, "big"))
            code = None
            for attempt in range(4):
                sock.sendto(raw.encode(msg), (host, port))
                deadline = time.monotonic() + 0.5 * 2 ** attempt
                while code is None and time.monotonic() < deadline:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    try:
                        reply = raw.decode(sock.recvfrom(70000)[0])
                    except socket.timeout:
                        break
                    if reply.mid == mid and reply.mtype == raw.ACK and reply.code == 0:
                        continue  # empty ACK: the answer follows
                    if reply.token == msg.token:
                        if reply.mtype == raw.CON:
                            sock.sendto(raw.encode(raw.Msg(raw.ACK, 0, reply.mid)), (host, port))
                        code = reply.code_str
                if code is not None:
                    break
            if code != "2.01":
                errors.append((token, value, code))
                return
    finally:
        sock.close()


def run_devices(bridge, values_of):
    errors = []
    threads = [threading.Thread(target=post_all, args=(bridge.host, bridge.coap_port, token,
                                                       values_of(name), errors), daemon=True)
               for name, token in DEVICES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def telemetry_messages(platform):
    return platform.received("v1/gateway/telemetry")


def values_by_device(messages):
    seen = collections.defaultdict(list)
    for doc in messages:
        for device, entries in doc.items():
            seen[device] += [entry["values"]["v"] for entry in entries]
    return seen


def test_concurrent_uplinks_of_many_devices_arrive_once_in_order_and_batched(batch_bridge,
                                                                              platform):
    platform.clear()
    started = time.monotonic()
    expected = {name: ["%s-%d" % (name, n) for n in range(PER_DEVICE)] for name, _ in DEVICES}
    total = len(DEVICES) * PER_DEVICE

    # Every device's first uplink also connects it: 2.01 comes before the connect's PUBACK.
    run_devices(batch_bridge, lambda name: expected[name])
    wait_until(lambda: sum(len(v) for v in values_by_device(telemetry_messages(platform))
                           .values()) >= total, 10, "%d telemetry entries" % total)
    time.sleep(0.3)  # anything published twice would show up now

    messages = telemetry_messages(platform)
    seen = values_by_device(messages)
    assert set(seen) == set(expected)
    for name, values in expected.items():
        assert seen[name] == values, name  # each exactly once, in the order sent
    assert sum(len(v) for v in seen.values()) == total

    multi = [doc for doc in messages if len(doc) > 1]
    assert multi, "no publish carried more than one device: %s" % [list(d) for d in messages]
    assert len(messages) < total  # fewer publishes than uplinks
    connects = platform.received("v1/gateway/connect")
    assert sorted(c["device"] for c in connects) == sorted(name for name, _ in DEVICES)
    with platform.lock:
        wire = [(m.topic, json.loads(m.payload)) for m in platform.messages]
    for name, _ in DEVICES:  # a device's data never reaches the platform before its connect
        first_connect = min(i for i, (topic, doc) in enumerate(wire)
                            if topic == "v1/gateway/connect" and doc["device"] == name)
        first_data = min(i for i, (topic, doc) in enumerate(wire)
                         if topic == "v1/gateway/telemetry" and name in doc)
        assert first_connect < first_data, name
    assert time.monotonic() - started < 10


def test_second_round_from_connected_devices_is_batched_too(batch_bridge, platform):
    platform.clear()
    expected = {name: ["r2-%s-%d" % (name, n) for n in range(PER_DEVICE)] for name, _ in DEVICES}
    total = len(DEVICES) * PER_DEVICE
    run_devices(batch_bridge, lambda name: expected[name])
    wait_until(lambda: sum(len(v) for v in values_by_device(telemetry_messages(platform))
                           .values()) >= total, 10, "%d telemetry entries" % total)
    time.sleep(0.3)
    messages = telemetry_messages(platform)
    seen = values_by_device(messages)
    assert dict(seen) == expected
    assert any(len(doc) > 1 for doc in messages)
    assert platform.received("v1/gateway/connect") == []  # still connected: no new connect
    log = batch_bridge.read_log()
    assert "Traceback" not in log
