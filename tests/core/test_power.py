"""Power-saving modes in the core (power.py and the observe queues' gate): PSM, eDRX, DRX,
as ThingsBoard's DefaultCoapClientContext applies them; times and events are plain values."""

import dataclasses
import json

import pytest

from bridge.settings.profiles import ClientSettings, DeviceProfileConfig
from bridge.core import codes
from bridge.core.actions import Device, Notify, PowerSettings, Reply, Store, Withdraw
from bridge.core.observe import ACK, DELIVERED, TIMEOUT, WITHDRAWN
from bridge.core.power import merge
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from test_downstream_session import (NOW, PEER, get, observe_attributes, of, post, push, run,
                                     server_rpc)

PSM_DEV = Device("Dev A", "meter")


def make_core(mode="PSM", timer=10000, device=PSM_DEV, transport_log=False, **settings):
    config = core_config(puback_timeout=10, idle_timeout=600, request_timeout=10, **settings)
    config = dataclasses.replace(
        config, coap=dataclasses.replace(config.coap, transport_log=transport_log),
        device_profiles={"meter": DeviceProfileConfig(clientSettings=ClientSettings(
            mode, timer if mode == "PSM" else 0, 0, timer if mode == "E_DRX" else 0))})
    core = GatewayCore(config, {"tok": device}.get)
    assert core.on_link_up(NOW) == []
    return core


def observing(core, now=NOW):
    """Dev A observes /attributes (CON) and /rpc at ``now``; returns the core."""
    observe_attributes(core, ref=50, shared={"s": 1}, now=now)
    run(core, handled(core, get(60, "rpc", observe=0, token=b"\xb1"), now), now)
    return core


def notifies(actions):
    return of(actions, Notify)


def ack(core, notify, now):
    return run(core, core.on_notified(notify.ref, ACK, now), now)


def uplink(core, ref, now):
    return run(core, handled(core, post(ref, "telemetry", b'{"t": 1}'), now), now)


def tick(core, now):
    return core.on_tick(now)


# == PSM ======================================================================

def test_psm_sends_within_the_activity_timer_after_a_request():
    core = observing(make_core())
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9.9))
    assert json.loads(one.payload) == {"a": 1}


def test_psm_merges_attribute_changes_while_asleep_and_sends_them_with_the_rpc_at_the_next_request():
    core = observing(make_core())
    assert tick(core, NOW + 10.5) == []  # asleep now
    assert core.stats["power_asleep"] == 1 and core.gauges()["devices_asleep"] == 1
    assert notifies(push(core, {"a": 1, "b": 1}, now=NOW + 12)) == []
    assert notifies(push(core, {"a": 2, "deleted": ["s"]}, now=NOW + 13)) == []
    assert notifies(push(core, {"c": 3, "deleted": ["b"]}, now=NOW + 14)) == []
    assert notifies(run(core, server_rpc(core, 7, now=NOW + 15), NOW + 15)) == []
    assert notifies(run(core, server_rpc(core, 8, now=NOW + 16), NOW + 16)) == []
    woke = uplink(core, 900, NOW + 30)
    assert core.stats["power_awake"] == 1
    attributes, rpc = sorted(notifies(woke), key=lambda n: n.token)
    assert json.loads(attributes.payload) == {"a": 2, "c": 3, "deleted": ["s", "b"]}
    assert json.loads(rpc.payload) == {"id": 7, "method": "setGpio", "params": {"pin": 7}}
    [second] = notifies(ack(core, rpc, NOW + 30.1))  # one CON at a time: then the next RPC
    assert json.loads(second.payload)["id"] == 8


def test_an_ack_counts_as_hearing_from_the_device():
    core = observing(make_core())
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9))
    ack(core, one, NOW + 9.5)
    assert tick(core, NOW + 11) == []
    [two] = notifies(push(core, {"a": 2}, now=NOW + 19))  # 9.5 s after the ACK
    assert json.loads(two.payload) == {"a": 2}


def test_a_psm_device_falling_asleep_with_a_con_in_flight_stops_its_retransmissions():
    core = observing(make_core())
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9.8))
    assert tick(core, NOW + 10.3) == [Withdraw(one.ref, one.remote)]
    assert core.stats["notifications_withdrawn"] == 0  # asked, not yet done
    # the datagram transport stopped it: unheard, it waits first in its queue
    assert core.on_notified(one.ref, WITHDRAWN, NOW + 10.3) == []
    assert core.stats["notifications_withdrawn"] == 1
    assert notifies(push(core, {"b": 2}, now=NOW + 12)) == []  # merged meanwhile
    # a late outcome of it changes nothing: its relations stay
    assert core.on_notified(one.ref, TIMEOUT, NOW + 60) == []
    assert len(core.subscriptions) == 2
    [again] = notifies(uplink(core, 900, NOW + 70))
    assert json.loads(again.payload) == {"a": 1} and again.ref != one.ref
    [merged] = notifies(ack(core, again, NOW + 70.1))
    assert json.loads(merged.payload) == {"b": 2}


def test_a_withdrawn_notification_acknowledged_after_all_is_not_sent_twice():
    """Its ACK was on its way when the device fell asleep: it was heard. The late ACK does
    not wake the device (it was sent before it slept)."""
    core = observing(make_core())
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9.9))
    [withdraw] = tick(core, NOW + 10.3)
    assert core.on_notified(one.ref, WITHDRAWN, NOW + 10.3) == []
    assert notifies(push(core, {"b": 2}, now=NOW + 10.4)) == []  # merged: asleep
    assert core.on_notified(one.ref, ACK, NOW + 10.5) == []  # heard; still asleep
    assert core.stats["power_awake"] == 0 and core.power.asleep("Dev A", NOW + 10.5)
    [merged] = notifies(uplink(core, 900, NOW + 40))
    assert json.loads(merged.payload) == {"b": 2}  # {"a": 1} is not sent again
    assert notifies(ack(core, merged, NOW + 40.1)) == []


def test_a_withdrawn_notification_reset_after_all_ends_its_relation():
    core = observing(make_core())
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9.9))
    tick(core, NOW + 10.3)
    core.on_notified(one.ref, WITHDRAWN, NOW + 10.3)
    run(core, core.on_notified(one.ref, "reset", NOW + 10.5), NOW + 10.5)
    assert core.subscriptions.observers.get("Dev A", "attributes") is None
    assert core.subscriptions.observers.get("Dev A", "rpc") is not None


def test_a_notification_the_transport_could_not_withdraw_is_not_sent_twice():
    """Over a reliable connection (RFC 8323) nothing is retransmitted and nothing withdrawn:
    a notification written while the connection was paused is delivered, once."""
    core = observing(make_core())
    run(core, server_rpc(core, 7, now=NOW + 9.8), NOW + 9.8)
    [rpc] = [a for a in tick(core, NOW + 10.3)]
    assert type(rpc) is Withdraw
    assert core.on_notified(rpc.ref, DELIVERED, NOW + 11) == []  # it went after all
    assert core.stats["notifications_withdrawn"] == 0
    assert notifies(uplink(core, 900, NOW + 40)) == []  # not again


def test_a_con_timeout_while_the_device_sleeps_keeps_its_relations():
    core = observing(make_core("E_DRX"))  # eDRX: nothing is withdrawn at the window's end
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9))
    assert tick(core, NOW + 11) == []
    core.on_notified(one.ref, TIMEOUT, NOW + 60)
    assert len(core.subscriptions) == 2
    [again] = notifies(uplink(core, 900, NOW + 70))
    assert json.loads(again.payload) == {"a": 1}


def test_a_con_timeout_while_the_device_is_awake_still_ends_its_relations():
    core = observing(make_core(timer=600000))
    [one] = notifies(push(core, {"a": 1}, now=NOW + 9))
    core.on_notified(one.ref, TIMEOUT, NOW + 100)
    assert len(core.subscriptions) == 0


def test_held_rpcs_expire_at_rpc_queue_ttl_and_are_never_sent_late():
    core = observing(make_core(rpc_queue_ttl=60))
    run(core, server_rpc(core, 7, now=NOW + 20), NOW + 20)
    tick(core, NOW + 81)
    assert core.stats["rpc_expired"] == 1
    assert notifies(uplink(core, 900, NOW + 90)) == []


def test_held_rpcs_are_bounded_by_rpc_queue_size():
    core = observing(make_core(rpc_queue_size=3))
    for n in range(10):
        run(core, server_rpc(core, n, now=NOW + 20 + n), NOW + 20 + n)
    assert core.stats["rpc_dropped"] == 7


def test_the_device_must_hear_nothing_while_asleep_whatever_the_platform_sends():
    core = observing(make_core())
    tick(core, NOW + 11)
    for n in range(2000):
        assert notifies(push(core, {"k%d" % (n % 5): n}, now=NOW + 12)) == []
    sleeper = core.power.sleepers["Dev A"]
    assert len(sleeper.merged) == 5  # one value per key held, however many pushes
    [merged] = [n for n in notifies(uplink(core, 900, NOW + 40)) if n.token == b"\xa1"]
    assert json.loads(merged.payload) == {"k%d" % k: 1995 + k for k in range(5)}


# == eDRX =====================================================================

def test_edrx_sends_the_first_downlink_after_the_window_then_holds_until_the_next_request():
    core = observing(make_core("E_DRX"))
    [first] = notifies(push(core, {"a": 1}, now=NOW + 12))
    ack(core, first, NOW + 40)  # heard at its paging occasion: an ACK is a request
    tick(core, NOW + 51)
    [second] = notifies(push(core, {"a": 2}, now=NOW + 52))  # first after this window
    assert json.loads(second.payload) == {"a": 2}
    # its ACK never comes back; the next pushes wait (merged)
    assert notifies(push(core, {"a": 3}, now=NOW + 53)) == []
    assert notifies(push(core, {"b": 4}, now=NOW + 54)) == []
    core.on_notified(second.ref, TIMEOUT, NOW + 100)
    woke = notifies(uplink(core, 900, NOW + 110))
    assert [json.loads(n.payload) for n in woke] == [{"a": 2}]  # again, first in its queue
    [merged] = notifies(ack(core, woke[0], NOW + 110.1))
    assert json.loads(merged.payload) == {"a": 3, "b": 4}


# == DRX, no mode, and the device's own settings ==============================

@pytest.mark.parametrize("mode", ["DRX", ""])
def test_drx_and_no_mode_are_as_before(mode):
    core = observing(make_core(mode))
    tick(core, NOW + 1000)
    [one] = notifies(push(core, {"a": 1}, now=NOW + 1000))
    assert json.loads(one.payload) == {"a": 1}
    assert core.power.sleepers == {}


def test_a_devices_own_settings_win_over_its_profiles():
    device = Device("Dev A", "meter", PowerSettings("PSM", 2000))
    core = observing(make_core("DRX", device=device))
    assert notifies(push(core, {"a": 1}, now=NOW + 3)) == []  # its own 2 s timer
    core = observing(make_core("PSM", 2000, device=Device("Dev A", "meter",
                                                          PowerSettings("DRX"))))
    assert len(notifies(push(core, {"a": 1}, now=NOW + 300))) == 1
    # its own mode without a timer: the profile's timer, then the transport's default (10 s)
    core = observing(make_core("DRX", device=Device("Dev A", "meter", PowerSettings("PSM"))))
    assert len(notifies(push(core, {"a": 1}, now=NOW + 9.9))) == 1
    assert core.power.mode_of(Device("x", "meter", PowerSettings("PSM"))) == ("PSM", 10.0)
    assert core.power.mode_of(Device("x", "meter", PowerSettings(None, 5000))) is None


def test_transitions_are_written_as_transport_log_telemetry_when_enabled():
    core = observing(make_core(transport_log=True))
    [asleep] = of(tick(core, NOW + 11), Store)
    [entry] = json.loads(asleep.entry.payload)["Dev A"]
    assert entry["values"] == {"transportLog": "Info: Client is sleeping!"}
    assert entry["ts"] // 1000 == int(NOW + 11)
    awake = [s for s in of(handled(core, post(901, "telemetry", b'{"t": 2}'), NOW + 20), Store)
             if b"transportLog" in s.entry.payload]
    [entry] = json.loads(awake[0].entry.payload)["Dev A"]
    assert entry["values"] == {"transportLog": "Info: Client is awake!"}
    assert [r for r in of(run(core, awake, NOW + 20), Reply)] == []  # answered to no one


def test_without_transport_log_nothing_is_written():
    core = observing(make_core())
    assert of(tick(core, NOW + 11), Store) == []


def test_the_bulk_uplink_path_wakes_the_device_too():
    core = observing(make_core())
    tick(core, NOW + 11)
    push(core, {"a": 1}, now=NOW + 12)
    actions = core.on_uplinks([(901, "tok", "telemetry", b'{"t": 1}', PEER)], NOW + 20)
    assert [json.loads(n.payload) for n in notifies(actions)] == [{"a": 1}]


def test_merge_keeps_the_last_change_of_each_key():
    merged, deleted = {}, {}
    merge(merged, deleted, {"a": 1, "deleted": ["x"]})
    merge(merged, deleted, {"x": 5, "deleted": ["a"]})
    merge(merged, deleted, {"b": 2})
    assert (merged, list(deleted)) == ({"x": 5, "b": 2}, ["a"])


def test_errors_still_wake_the_device():
    core = observing(make_core())
    tick(core, NOW + 11)
    push(core, {"a": 1}, now=NOW + 12)
    actions = handled(core, post(901, "telemetry", b"not json"), NOW + 20)
    assert [a.code for a in of(actions, Reply)] == [codes.BAD_REQUEST]
    assert len(notifies(actions)) == 1
