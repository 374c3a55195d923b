"""A relation taken over from a process that died (GatewayCore.restore_relation), and the
hook that tells the edge which relations begin and end (Observers.changed)."""

import json

from bridge.core import codes
from bridge.core.actions import Device, Log, Notify, Publish
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from test_downstream_session import (CONNECT, DEV_A, NOW, PEER, answer,
                                     attribute_requests, get, make_core, of, push, run,
                                     server_rpc)

OBSERVATION = object()  # the transport's, opaque to the core


def test_a_restored_attributes_observer_is_connected_at_link_up_and_sent_its_whole_view():
    core = make_core()
    assert core.restore_relation(DEV_A, "attributes", PEER, b"\x51", OBSERVATION, 1024,
                                 NOW) == []  # the link is not up yet: nothing to send
    seen = run(core, core.on_link_up(NOW))
    connects = [json.loads(p.payload) for p in of(seen, Publish) if p.topic == CONNECT]
    assert connects == [{"device": "Dev A", "type": "thermo"}]
    [request] = attribute_requests(seen)  # the refresh: every attribute, names first
    assert request["device"] == "Dev A"
    seen = answer(core, request, values={"mode": "eco", "unit": "C"})
    asked = attribute_requests(seen)
    seen = answer(core, asked[0], values={"mode": "eco", "unit": "C"})
    [notify] = of(seen, Notify)  # all of it: what it missed while no process served it
    assert json.loads(notify.payload) == {"mode": "eco", "unit": "C"}
    assert (notify.remote, notify.token, notify.observation) == (PEER, b"\x51", OBSERVATION)
    # from then on it is like any observer: the next push is a delta
    assert core.on_notified(notify.ref, "ack", NOW) == []
    [delta] = of(push(core, {"mode": "comfort"}), Notify)
    assert json.loads(delta.payload) == {"mode": "comfort"}
    assert core.gauges()["observers"] == 1


def test_a_restored_rpc_observer_gets_the_next_rpc_and_a_restore_with_the_link_up_connects():
    core = make_core()
    run(core, core.on_link_up(NOW))
    actions = core.restore_relation(DEV_A, "rpc", PEER, b"\x52", OBSERVATION, 1024, NOW)
    assert [json.loads(p.payload)["device"] for p in of(actions, Publish)
            if p.topic == CONNECT] == ["Dev A"]
    run(core, actions)
    [notify] = of(server_rpc(core, 7, "reboot", {}), Notify)
    assert json.loads(notify.payload) == {"id": 7, "method": "reboot", "params": {}}
    assert notify.token == b"\x52"


def test_a_restored_relation_whose_device_is_gone_ends_at_its_first_notification_timeout():
    core = make_core()
    run(core, core.on_link_up(NOW))
    run(core, core.restore_relation(DEV_A, "rpc", PEER, b"\x53", OBSERVATION, 1024, NOW))
    [notify] = of(server_rpc(core, 8), Notify)
    ended = core.on_notified(notify.ref, "timeout", NOW + 93)
    assert core.gauges()["observers"] == 0
    [line] = of(ended, Log)
    assert line.fields == {"feature": "rpc", "device": "Dev A", "outcome": "timeout"}


def test_no_room_for_a_restored_relation_is_said_so():
    core = GatewayCore(core_config(max_observers=1), lambda token: None)
    assert core.restore_relation(DEV_A, "rpc", PEER, b"\x01", OBSERVATION, 1024, NOW) == []
    assert core.restore_relation(Device("Dev B", "thermo"), "rpc", ("10.0.0.2", 1), b"\x02",
                                 OBSERVATION, 1024, NOW) is None
    assert core.gauges()["observers"] == 1


def test_the_edge_hears_each_relation_begin_and_end_but_not_each_notification():
    core = make_core()
    run(core, core.on_link_up(NOW))
    heard = []
    core.subscriptions.observers.changed = lambda key, relation: heard.append(
        (key, relation is not None))
    run(core, handled(core, get(1, "rpc", observe=0, token=b"\x61"), NOW))
    assert heard == [(("Dev A", "rpc"), True)]
    for n in range(3):
        [notify] = of(server_rpc(core, 20 + n), Notify)
        core.on_notified(notify.ref, "ack", NOW)
    assert heard == [(("Dev A", "rpc"), True)]  # notifications are not changes
    run(core, handled(core, get(2, "rpc", observe=0, token=b"\x62"), NOW))  # replaced
    assert heard[1:] == [(("Dev A", "rpc"), False), (("Dev A", "rpc"), True)]
    run(core, handled(core, get(3, "rpc", observe=1, token=b"\x62"), NOW))  # deregistered
    assert heard[-1] == (("Dev A", "rpc"), False)
    run(core, handled(core, get(4, "rpc", observe=0, token=b"\x63"), NOW))
    [notify] = of(server_rpc(core, 30), Notify)
    core.on_notified(notify.ref, "reset", NOW)
    assert heard[-2:] == [(("Dev A", "rpc"), True), (("Dev A", "rpc"), False)]
