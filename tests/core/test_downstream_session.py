"""Tests of the downstream half of GatewayCore: attribute reads, observe, RPC, gateway RPCs.

Every flow is driven end to end by feeding the core's own Publish actions back to it
(PUBACK via on_published) and answering them as the platform would (on_message).
"""

import itertools
import json

import pytest

from bridge.core import codes
from bridge.core.actions import (DeleteDevice, Device, Log, Notify, Publish, RenameDevice, Reply,
                                 Request)
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from logtext import text

NOW = 1_700_000_000.5
DEV_A = Device("Dev A", "thermo")
PEER = ("10.0.0.1", 5683)
OTHER_PEER = ("10.0.0.9", 5683)

CONNECT = "v1/gateway/connect"
ATTRIBUTES = "v1/gateway/attributes"
ATTR_REQUEST = "v1/gateway/attributes/request"
ATTR_RESPONSE = "v1/gateway/attributes/response"
GATEWAY_RPC = "v1/gateway/rpc"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"


# -- helpers -------------------------------------------------------------------------

def make_core(devices=None, **settings):
    """A core whose registry is the dict ``devices`` (token -> Device)."""
    devices = {"tok": DEV_A} if devices is None else devices
    options = dict(puback_timeout=10, idle_timeout=600, request_timeout=10)
    options.update(settings)
    return GatewayCore(core_config(**options), lambda token: devices.get(token))


def get(ref, feature, query=(), observe=None, token=b"\x01", remote=PEER, dev_token="tok",
        block2=None):
    return Request(ref, codes.GET, ("api", "v1", dev_token, feature), b"", tuple(query),
                   observe=observe, token=token, remote=remote, block2=block2)


def post(ref, path, payload, dev_token="tok"):
    return Request(ref, codes.POST, ("api", "v1", dev_token) + tuple(path.split("/")), payload,
                   remote=PEER)


def dumps(doc):
    return json.dumps(doc).encode("utf-8")


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def visible(actions):
    """What reaches a CoAP client: replies and notifications."""
    return [a for a in actions if isinstance(a, (Reply, Notify))]


def dotted(action):
    assert isinstance(action, Reply), action
    return codes.dotted(action.code)


_outbox_ids = itertools.count(1)


def run(core, actions, now=NOW):
    """Play the edges: the broker acknowledges every Publish (following connect -> waiting
    publishes) and, where the core asks to store an uplink durably (``Store``), the outbox
    writes it. Returns every action seen, in order, including the Publishes themselves."""
    seen = []
    todo = list(actions)
    while todo:
        action = todo.pop(0)
        seen.append(action)
        if isinstance(action, Publish):
            todo += core.on_published(action.ref, 0, now)
        elif type(action).__name__ == "Store":
            todo += core.on_stored([(action.ref, next(_outbox_ids))], now)
    return seen


def attribute_requests(actions):
    return [json.loads(p.payload) for p in of(actions, Publish) if p.topic == ATTR_REQUEST]


def without_id(body):
    return {k: v for k, v in body.items() if k != "id"}


def answer(core, request_body, now=NOW, **fields):
    """The platform answers attribute request ``request_body`` with ``fields``."""
    doc = {"id": request_body["id"], "device": request_body["device"]}
    doc.update(fields)
    return run(core, core.on_message(ATTR_RESPONSE, dumps(doc), now), now)


def push(core, data, device="Dev A", now=NOW):
    return core.on_message(ATTRIBUTES, dumps({"device": device, "data": data}), now)


def server_rpc(core, rpc_id, method="setGpio", params=None, device="Dev A", now=NOW):
    params = {"pin": rpc_id} if params is None else params
    doc = {"device": device, "data": {"id": rpc_id, "method": method, "params": params}}
    return core.on_message(GATEWAY_RPC, dumps(doc), now)


def payload_of(notify_or_reply):
    return json.loads(notify_or_reply.payload)


def linked_core(**settings):
    core = make_core(**settings)
    assert core.on_link_up(NOW) == []
    return core


def connected_core(**settings):
    """Link up and Dev A connected upstream (one telemetry uplink done)."""
    core = linked_core(**settings)
    seen = run(core, handled(core, post(900, "telemetry", b'{"t": 1}'), NOW))
    assert of(seen, Reply) == [Reply(900, codes.CREATED)]
    return core


def start_read(core, ref, query=(), now=NOW):
    """GET /attributes; returns the attribute request bodies published (after connect)."""
    seen = run(core, handled(core, get(ref, "attributes", query), now), now)
    assert visible(seen) == []
    return attribute_requests(seen)


def observe_attributes(core, ref=50, shared=None, token=b"\xa1", remote=PEER, now=NOW,
                       dev_token="tok"):
    """Register an observer of /attributes whose refresh finds ``shared``; returns the Reply."""
    shared = {"s": 2} if shared is None else shared
    seen = run(core, handled(core, get(ref, "attributes", observe=0, token=token, remote=remote,
                                       dev_token=dev_token), now), now)
    assert visible(seen) == []
    [discover] = attribute_requests(seen)
    seen = answer(core, discover, now, values=dict(shared, clientAttr=True))
    assert visible(seen) == []
    [scoped] = attribute_requests(seen)
    assert scoped["client"] is False
    [reply] = answer(core, scoped, now, values=shared)
    return reply


def observe_rpc(core, ref=60, token=b"\xb1", remote=PEER, now=NOW):
    return run(core, handled(core, get(ref, "rpc", observe=0, token=token, remote=remote), now),
               now)


def delivered(core, actions, now=NOW):
    """``actions`` and what follows when the transport reports each notification among
    them (and those it releases) delivered: a NON observer's stream, one at a time."""
    out = list(actions)
    for action in out:
        if isinstance(action, Notify):
            out += core.on_notified(action.ref, "delivered", now)
    return out


# -- attribute reads ---------------------------------------------------------------------

def test_attribute_get_with_client_and_shared_keys_sends_one_legacy_request_per_scope():
    core = linked_core()
    bodies = start_read(core, 1, ("clientKeys=a,b", "sharedKeys=s"))
    assert sorted((without_id(b) for b in bodies), key=lambda b: b["client"]) == [
        {"device": "Dev A", "client": False, "key": "s"},
        {"device": "Dev A", "client": True, "keys": ["a", "b"]},
    ]
    ids = [b["id"] for b in bodies]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 2


def test_attribute_get_publishes_connect_before_the_attribute_requests():
    core = linked_core()
    actions = handled(core, get(1, "attributes", ("clientKeys=a",)), NOW)
    assert [p.topic for p in of(actions, Publish)] == [CONNECT]
    seen = run(core, actions)
    assert [p.topic for p in of(seen, Publish)] == [CONNECT, ATTR_REQUEST]


def test_attribute_get_replies_2_05_json_with_client_and_shared_only_after_both_answers():
    core = linked_core()
    client, shared = sorted(start_read(core, 1, ("clientKeys=a,b", "sharedKeys=s")),
                            key=lambda b: not b["client"])
    assert answer(core, client, values={"a": 1, "b": "two"}) == []
    [reply] = answer(core, shared, value=[1, 2])
    assert (reply.ref, dotted(reply), reply.content_format) == (1, "2.05", codes.APPLICATION_JSON)
    assert payload_of(reply) == {"client": {"a": 1, "b": "two"}, "shared": {"s": [1, 2]}}


def test_attribute_get_reply_leaves_out_an_empty_scope():
    core = linked_core()
    client, shared = sorted(start_read(core, 1, ("clientKeys=a", "sharedKeys=s,t")),
                            key=lambda b: not b["client"])
    answer(core, client)  # nothing found: no "value"
    [reply] = answer(core, shared, values={"t": False})
    assert dotted(reply) == "2.05"
    assert payload_of(reply) == {"shared": {"t": False}}


def test_attribute_get_with_only_client_keys_asks_the_client_scope_only():
    core = linked_core()
    [body] = start_read(core, 1, ("clientKeys=fw",))
    assert without_id(body) == {"device": "Dev A", "client": True, "key": "fw"}
    [reply] = answer(core, body, value="1.0")
    assert payload_of(reply) == {"client": {"fw": "1.0"}}


def test_attribute_get_finding_nothing_in_either_scope_gets_4_04():
    core = linked_core()
    client, shared = start_read(core, 1, ("clientKeys=a", "sharedKeys=s,t"))
    answer(core, client)
    [reply] = answer(core, shared, values={})
    assert (reply.ref, dotted(reply)) == (1, "4.04")


def test_attribute_get_while_link_down_gets_5_03_and_publishes_nothing():
    core = make_core()
    actions = handled(core, get(1, "attributes", ("clientKeys=a",)), NOW)
    assert of(actions, Publish) == []
    [reply] = actions
    assert (dotted(reply), reply.max_age) == ("5.03", 5)


def test_attribute_get_without_keys_discovers_names_then_asks_each_scope_for_them():
    core = linked_core()
    [discover] = start_read(core, 1)
    assert without_id(discover) == {"device": "Dev A", "client": False, "keys": []}

    seen = answer(core, discover, values={"a": 1, "s": 2})  # client and shared, merged
    assert visible(seen) == []
    scoped = attribute_requests(seen)
    assert sorted((b["client"], b["keys"]) for b in scoped) == [
        (False, ["a", "s"]), (True, ["a", "s"])]

    client, shared = sorted(scoped, key=lambda b: not b["client"])
    assert answer(core, client, values={"a": 1}) == []
    [reply] = answer(core, shared, values={"s": 2})
    assert dotted(reply) == "2.05"
    assert payload_of(reply) == {"client": {"a": 1}, "shared": {"s": 2}}


def test_attribute_get_discovering_no_attributes_gets_4_04():
    core = linked_core()
    [discover] = start_read(core, 1)
    [reply] = answer(core, discover, values={})
    assert (reply.ref, dotted(reply)) == (1, "4.04")


def test_nameless_discovery_answer_uses_client_attribute_names_the_device_posted():
    core = connected_core()
    seen = run(core, handled(core, post(2, "attributes", b'{"fw": "1.0"}'), NOW))
    assert of(seen, Reply) == [Reply(2, codes.CREATED)]

    [discover] = start_read(core, 3)
    seen = answer(core, discover, value="1.0")  # ThingsBoard hid the only name
    assert visible(seen) == []
    scoped = attribute_requests(seen)
    assert sorted((b["client"], b["key"]) for b in scoped) == [(False, "fw"), (True, "fw")]
    client, shared = sorted(scoped, key=lambda b: not b["client"])
    answer(core, client, value="1.0")
    [reply] = answer(core, shared)
    assert payload_of(reply) == {"client": {"fw": "1.0"}}


def test_nameless_discovery_answer_without_known_names_gets_5_02_for_a_read():
    core = linked_core()
    [discover] = start_read(core, 1)
    [reply] = answer(core, discover, value=42)
    assert (reply.ref, dotted(reply)) == (1, "5.02")


def test_nameless_answer_to_a_multi_key_request_gets_5_02():
    core = linked_core()
    [body] = start_read(core, 1, ("sharedKeys=a,b",))
    [reply] = answer(core, body, value=1)
    assert (reply.ref, dotted(reply)) == (1, "5.02")


def test_attribute_read_times_out_with_5_04_and_a_late_answer_yields_nothing():
    core = linked_core()
    [body] = start_read(core, 1, ("sharedKeys=s",))
    assert visible(core.on_tick(NOW + 9.9)) == []
    [reply] = visible(core.on_tick(NOW + 10))
    assert (reply.ref, dotted(reply)) == (1, "5.04")
    assert answer(core, body, NOW + 11, value=1) == []
    assert visible(core.on_tick(NOW + 30)) == []


def test_attribute_read_is_answered_once():
    core = linked_core()
    [body] = start_read(core, 1, ("sharedKeys=s",))
    [reply] = answer(core, body, value=1)
    assert dotted(reply) == "2.05"
    assert answer(core, body, value=1) == []
    assert visible(core.on_tick(NOW + 20)) == []


# -- observe /attributes ---------------------------------------------------------------------

def test_observe_attributes_first_reply_carries_shared_view_and_observe_number_after_refresh():
    core = linked_core()
    actions = handled(core, get(5, "attributes", observe=0, token=b"\xa1"), NOW)
    assert visible(actions) == []  # nothing until the platform has answered
    seen = run(core, actions)
    [discover] = attribute_requests(seen)
    assert without_id(discover) == {"device": "Dev A", "client": False, "keys": []}
    seen = answer(core, discover, values={"s": 2, "c": 1})
    assert visible(seen) == []
    [scoped] = attribute_requests(seen)
    assert without_id(scoped) == {"device": "Dev A", "client": False, "keys": ["c", "s"]}

    [reply] = answer(core, scoped, values={"s": 2})
    assert (reply.ref, dotted(reply), reply.content_format) == (5, "2.05", codes.APPLICATION_JSON)
    assert payload_of(reply) == {"s": 2}
    assert isinstance(reply.observe, int)
    assert core.subscriptions.observers.get("Dev A", "attributes") is not None


def test_shared_attribute_push_is_notified_as_the_delta():
    core = linked_core()
    reply = observe_attributes(core, token=b"\xa1", shared={"s": 2, "t": 1})
    [notify] = push(core, {"s": 3})
    assert isinstance(notify, Notify)
    assert (notify.remote, notify.token, notify.code, notify.device) == (
        PEER, b"\xa1", codes.CONTENT, "Dev A")
    assert payload_of(notify) == {"s": 3}
    assert notify.observe > reply.observe


def test_shared_attribute_deletion_push_is_notified_as_deleted_list():
    core = linked_core()
    observe_attributes(core, shared={"s": 2, "t": 1})
    [notify] = push(core, {"deleted": ["t"]})
    assert payload_of(notify) == {"deleted": ["t"]}


def test_pushes_are_notified_in_order_one_con_at_a_time():
    core = linked_core()
    observe_attributes(core)
    [first] = push(core, {"s": 3})
    assert push(core, {"s": 4}) == []
    [second] = core.on_notified(first.ref, "ack", NOW)
    assert payload_of(second) == {"s": 4}


def test_push_for_another_device_is_not_notified():
    core = linked_core()
    observe_attributes(core)
    assert visible(push(core, {"s": 3}, device="Dev B")) == []


def test_pushes_during_the_observe_refresh_are_in_the_first_view_and_not_notified_separately():
    core = linked_core()
    seen = run(core, handled(core, get(5, "attributes", observe=0), NOW))
    [discover] = attribute_requests(seen)
    assert visible(push(core, {"early": 1})) == []
    seen = answer(core, discover, values={"s": 2, "t": 1})
    [scoped] = attribute_requests(seen)
    assert visible(push(core, {"s": 3, "deleted": ["t"]})) == []
    [reply] = answer(core, scoped, values={"s": 2, "t": 1})
    assert payload_of(reply) == {"s": 3, "early": 1}
    [notify] = push(core, {"u": 0})  # and the relation works from there on
    assert payload_of(notify) == {"u": 0}


def test_link_loss_reconnects_the_observer_and_refreshes_its_view():
    core = linked_core()
    observe_attributes(core, shared={"s": 2})
    assert core.on_link_down(NOW + 1) == []

    actions = core.on_link_up(NOW + 2)
    assert [(p.topic, json.loads(p.payload)) for p in of(actions, Publish)] == [
        (CONNECT, {"device": "Dev A", "type": "thermo"})]
    seen = run(core, actions, NOW + 2)
    [discover] = attribute_requests(seen)
    assert without_id(discover) == {"device": "Dev A", "client": False, "keys": []}
    [scoped] = attribute_requests(answer(core, discover, NOW + 2, values={"s": 5}))
    assert without_id(scoped) == {"device": "Dev A", "client": False, "key": "s"}
    [notify] = answer(core, scoped, NOW + 2, value=5)
    assert isinstance(notify, Notify)
    assert payload_of(notify) == {"s": 5}


def test_refresh_after_link_loss_notifies_attributes_deleted_meanwhile():
    core = linked_core()
    observe_attributes(core, shared={"s": 2, "t": 1})
    core.on_link_down(NOW + 1)
    [discover] = attribute_requests(run(core, core.on_link_up(NOW + 2), NOW + 2))
    [scoped] = attribute_requests(answer(core, discover, NOW + 2, values={"s": 2}))
    [notify] = answer(core, scoped, NOW + 2, value=2)
    assert payload_of(notify) == {"deleted": ["t"]}


def test_a_push_to_one_device_without_shared_attributes_leaves_the_others_view_empty():
    # devices without shared attributes share one empty view: it must never change in place
    core = make_core(devices={"tok": DEV_A, "tokb": Device("Dev B", "thermo")})
    assert core.on_link_up(NOW) == []
    observe_attributes(core, shared={})
    observe_attributes(core, ref=51, shared={}, token=b"\xa2", remote=OTHER_PEER,
                       dev_token="tokb")
    [notify] = visible(push(core, {"s": 7}))
    assert notify.remote == PEER and payload_of(notify) == {"s": 7}
    core.on_link_down(NOW + 1)
    requests = attribute_requests(run(core, core.on_link_up(NOW + 2), NOW + 2))
    [discover_b] = [body for body in requests if body["device"] == "Dev B"]
    # Dev B's refresh finds nothing, as before: no change to notify (not {"deleted": ["s"]})
    assert visible(answer(core, discover_b, NOW + 2, values={})) == []


def test_refresh_after_link_loss_finding_no_change_notifies_nothing():
    core = linked_core()
    observe_attributes(core, shared={"s": 2})
    core.on_link_down(NOW + 1)
    [discover] = attribute_requests(run(core, core.on_link_up(NOW + 2), NOW + 2))
    [scoped] = attribute_requests(answer(core, discover, NOW + 2, values={"s": 2}))
    assert visible(answer(core, scoped, NOW + 2, value=2)) == []


def test_idle_observer_is_not_disconnected_and_is_reconnected_after_link_loss():
    core = linked_core()
    observe_attributes(core)
    # observing: not idle (its connect is re-sent, see the claim tests below)
    assert [p.topic for p in of(core.on_tick(NOW + 700), Publish)] == [CONNECT]
    core.on_link_down(NOW + 701)
    actions = core.on_link_up(NOW + 1400)
    assert [p.topic for p in of(actions, Publish)] == [CONNECT]


def test_an_observer_is_claimed_again_every_half_idle_timeout():
    """ThingsBoard gives a device's session to the gateway connection that connected it
    last and tells nobody: an observing device's connect is re-sent (a claim) so that its
    RPCs and attribute updates come back to this connection."""
    core = linked_core()
    observe_attributes(core)
    assert of(core.on_tick(NOW + 299), Publish) == []
    [claim] = of(core.on_tick(NOW + 301), Publish)
    assert (claim.topic, json.loads(claim.payload)) == (CONNECT, {"device": "Dev A",
                                                                  "type": "thermo"})
    assert core.on_published(claim.ref, 0, NOW + 301) == []
    assert of(core.on_tick(NOW + 500), Publish) == []  # claimed at 301
    [again] = of(core.on_tick(NOW + 602), Publish)
    assert again.topic == CONNECT
    # a claim does not hold back the device's uplinks meanwhile
    seen = run(core, handled(core, post(901, "telemetry", b'{"t": 1}'), NOW + 603), NOW + 603)
    assert [p.topic for p in of(seen, Publish)] == ["v1/gateway/telemetry"]


def test_a_device_that_observes_nothing_is_not_claimed():
    core = connected_core()
    assert of(core.on_tick(NOW + 301), Publish) == []


def test_a_refused_claim_makes_the_next_uplink_connect_first():
    core = linked_core()
    observe_attributes(core)
    [claim] = of(core.on_tick(NOW + 301), Publish)
    [warning] = of(core.on_published(claim.ref, 0x80, NOW + 301), Log)
    assert "refused to connect device Dev A again" in text(warning)
    seen = run(core, handled(core, post(901, "telemetry", b'{"t": 1}'), NOW + 302), NOW + 302)
    assert [p.topic for p in of(seen, Publish)] == [CONNECT, "v1/gateway/telemetry"]


# -- echo immunity and stray messages -----------------------------------------------------------

def fully_observed_core(**settings):
    """Dev A observes /attributes and /rpc, has a pending read and a pending client RPC."""
    core = linked_core(**settings)
    observe_attributes(core, token=b"\xa1")
    observe_rpc(core, token=b"\xb1")
    start_read(core, 70, ("sharedKeys=s",))
    run(core, handled(core, post(71, "rpc", b'{"method": "getTime"}'), NOW))
    return core


def test_own_attribute_uplink_echo_is_not_notified():
    core = fully_observed_core()
    actions = core.on_message(ATTRIBUTES, b'{"Dev A": {"fw": "2.0"}}', NOW)
    assert visible(actions) == []
    [notify] = push(core, {"s": 9})  # the relation is unaffected
    assert payload_of(notify) == {"s": 9}


def test_own_rpc_reply_echo_is_not_notified():
    core = fully_observed_core()
    echo = {"device": "Dev A", "id": 3, "data": {"id": 3, "method": "m", "params": {}}}
    assert visible(core.on_message(GATEWAY_RPC, dumps(echo), NOW)) == []
    [notify] = server_rpc(core, 4)  # the relation is unaffected
    assert payload_of(notify)["id"] == 4


def test_own_rpc_reply_echo_is_not_kept_for_a_later_observer():
    core = linked_core()
    echo = {"device": "Dev A", "id": 3, "data": {"id": 3, "method": "m", "params": {}}}
    assert visible(core.on_message(GATEWAY_RPC, dumps(echo), NOW)) == []
    assert of(delivered(core, observe_rpc(core)), Notify) == []


@pytest.mark.parametrize("topic,payload", [
    ("v1/devices/me/attributes", b'{"shared": {"s": 1}}'),
    ("v1/devices/me/attributes/response/1", b'{"client": {}}'),
    ("v1/gateway/telemetry", b'{"Dev A": [{"ts": 1, "values": {"t": 1}}]}'),
    ("v1/gateway/connect", b'{"device": "Dev A", "type": "thermo"}'),
    (ATTR_REQUEST, b'{"id": 1, "device": "Dev A", "client": false, "key": "s"}'),
    ("some/random/topic", b"\x00\xff garbage"),
    (ATTRIBUTES, b"not json"),
    (ATTRIBUTES, b"[1, 2, 3]"),
    (ATTRIBUTES, b'{"device": 5, "data": {"s": 1}}'),
    (ATTRIBUTES, b'{"device": "Dev A", "data": "s"}'),
    (ATTRIBUTES, b'{"device": "Dev A", "id": 1, "data": {"s": 1}}'),
    (GATEWAY_RPC, b'{"device": "Dev A", "data": {"id": "x", "method": "m"}}'),
    (GATEWAY_RPC, b'{"device": "Dev A", "data": {"id": true, "method": "m"}}'),
    (GATEWAY_RPC, b'{"device": "Dev A", "data": {"id": 1}}'),
    (GATEWAY_RPC, b'"text"'),
    (ATTR_RESPONSE, b'{"id": 9999, "device": "Dev A", "value": 1}'),
    (ATTR_RESPONSE, b'{"id": "1", "device": "Dev A", "value": 1}'),
    (ATTR_RESPONSE, b'[]'),
    ("v1/gateway/disconnect", b'["Dev A"]'),
    ("v1/gateway/disconnect", b'{"device": {"x": 1}}'),
    (RPC_RESPONSE + "abc", b'{"ok": true}'),
    (RPC_RESPONSE + "999", b'{"ok": true}'),
    (RPC_RESPONSE, b'{"ok": true}'),
    (RPC_REQUEST + "1", b'[]'),
    (RPC_REQUEST + "1", b'{"method": "gateway_device_renamed", "params": "x"}'),
    (RPC_REQUEST + "1", b'{"method": "gateway_device_deleted", "params": 5}'),
    (RPC_REQUEST + "1", b'{"method": "reboot"}'),
])
def test_unrelated_or_malformed_messages_produce_no_reply_or_notify(topic, payload):
    core = fully_observed_core()
    actions = core.on_message(topic, payload, NOW)
    assert visible(actions) == []
    assert of(actions, (RenameDevice, DeleteDevice)) == []
    assert core.subscriptions.observers.get("Dev A", "attributes") is not None
    assert core.subscriptions.observers.get("Dev A", "rpc") is not None


@pytest.mark.parametrize("topic", [RPC_RESPONSE + "\u00b2", RPC_REQUEST + "\u00b2",
                                   RPC_RESPONSE + "\u0661\u00b2"])
def test_non_ascii_digit_rpc_topic_suffix_does_not_crash(topic):
    core = fully_observed_core()
    actions = core.on_message(topic, b'{"method": "gateway_device_deleted", "params": "Dev A"}',
                              NOW)
    assert visible(actions) == []


def nested(levels, leaf=1):
    """``levels`` nested JSON arrays around ``leaf``, as bytes (never built by recursion)."""
    return b"[" * levels + json.dumps(leaf).encode() + b"]" * levels


@pytest.mark.parametrize("topic,wrap", [
    (ATTRIBUTES, lambda value: b'{"device": "Dev A", "data": {"deep": %s}}' % value),
    (GATEWAY_RPC, lambda value: b'{"device": "Dev A", "data": {"id": 5, "method": "m", '
                                b'"params": %s}}' % value),
    (ATTR_RESPONSE, lambda value: b'{"id": 1, "device": "Dev A", "value": %s}' % value),
    (RPC_REQUEST + "7", lambda value: b'{"method": "m", "params": %s}' % value),
])
def test_platform_message_nested_5000_deep_is_skipped_with_one_warning(topic, wrap):
    core = fully_observed_core(json_max_depth=32)
    actions = core.on_message(topic, wrap(nested(5000)), NOW)
    assert visible(actions) == []
    [warning] = of(actions, Log)
    assert warning.level == "warn" and topic in text(warning)
    assert "nested deeper than 34 levels" in text(warning)  # the bound plus the envelope's 2
    assert core.stats["downstream_skipped"] == 1
    [notify] = push(core, {"s": 9})  # the next message is handled as usual
    assert payload_of(notify) == {"s": 9}


def test_platform_values_as_deep_as_devices_may_send_are_accepted():
    core = fully_observed_core(json_max_depth=32)
    # {"device", "data": {"deep": <31 levels>}}: "data" is what a device would send, 32 deep
    [notify] = push(core, {"deep": json.loads(nested(31))})
    assert payload_of(notify) == {"deep": json.loads(nested(31))}
    [rpc] = server_rpc(core, 8, params=json.loads(nested(32)))  # params one level under data
    assert payload_of(rpc)["params"] == json.loads(nested(32))


def test_unreadable_platform_messages_warn_once_a_minute_per_topic():
    core = fully_observed_core()
    levels = []
    for n in range(5):
        levels += [a.level for a in core.on_message(ATTRIBUTES, b"not json", NOW + n)]
    levels += [a.level for a in core.on_message(GATEWAY_RPC, b"not json", NOW + 5)]
    levels += [a.level for a in core.on_message(RPC_REQUEST + "1", b"{", NOW + 5)]
    levels += [a.level for a in core.on_message(RPC_REQUEST + "2", b"{", NOW + 6)]  # same topic
    levels += [a.level for a in core.on_message(ATTRIBUTES, b"not json", NOW + 61)]
    assert levels == ["warn", "debug", "debug", "debug", "debug", "warn", "warn", "debug", "warn"]
    assert core.stats["downstream_skipped"] == 9


# -- observe and Block2 (RFC 7959 §2.6) -----------------------------------------------

LONG = "x" * 1500  # a value that makes a representation longer than one 1024-byte block


def test_a_long_notification_is_kept_and_a_get_of_a_later_block_gets_it_not_a_read():
    core = linked_core()
    observe_attributes(core, shared={"s": 2})
    [notify] = push(core, {"note": LONG})
    assert notify.block_size == codes.BLOCK_SIZE and len(notify.payload) > codes.BLOCK_SIZE
    seen = run(core, handled(core, get(70, "attributes", token=b"\x07", block2=(1, 1024)),
                                     NOW))
    assert attribute_requests(seen) == []  # nothing asked of the platform
    [reply] = seen
    assert (reply.ref, dotted(reply), reply.content_format, reply.observe) == (
        70, "2.05", codes.APPLICATION_JSON, None)
    assert reply.payload == notify.payload  # the edge cuts block 1 out of it


def test_a_long_first_view_is_kept_for_the_gets_of_its_later_blocks():
    core = linked_core()
    first = observe_attributes(core, shared={"note": LONG})
    [reply] = handled(core, get(71, "attributes", block2=(2, 512)), NOW)
    assert (dotted(reply), reply.payload) == ("2.05", first.payload)


def test_a_short_notification_forgets_the_long_one_and_later_blocks_are_read_again():
    core = linked_core(request_timeout=10)
    observe_attributes(core, shared={"s": 2})
    [long] = push(core, {"note": LONG})
    assert core.on_notified(long.ref, "delivered", NOW) == []
    [short] = push(core, {"s": 3})
    assert len(short.payload) <= codes.BLOCK_SIZE
    seen = run(core, handled(core, get(72, "attributes", block2=(1, 1024)), NOW))
    assert visible(seen) == [] and len(attribute_requests(seen)) == 1  # an ordinary read


def test_block_size_asked_at_registration_cuts_notifications_at_that_size():
    core = linked_core()
    actions = run(core, handled(core, get(73, "rpc", observe=0, block2=(0, 64)), NOW))
    assert dotted(of(actions, Reply)[0]) == "2.03"
    [notify] = of(run(core, server_rpc(core, 9, params={"v": "y" * 80})), Notify)
    assert notify.block_size == 64
    [reply] = handled(core, get(74, "rpc", block2=(1, 64)), NOW)
    assert (dotted(reply), reply.payload) == ("2.05", notify.payload)


def test_later_blocks_of_a_read_with_keys_are_read_again_not_taken_from_the_relation():
    core = linked_core()
    observe_attributes(core, shared={"note": LONG})
    seen = run(core, handled(core, get(75, "attributes", query=["sharedKeys=note"],
                                         block2=(1, 1024)), NOW))
    assert visible(seen) == [] and len(attribute_requests(seen)) == 1


def test_get_of_a_later_rpc_block_without_a_long_notification_gets_4_00():
    core = connected_core()
    observe_rpc(core)
    [reply] = handled(core, get(76, "rpc", block2=(1, 1024)), NOW)
    assert dotted(reply) == "4.00"


# -- observe /rpc and server-side RPC ----------------------------------------------------------

def test_observe_rpc_replies_2_03_empty_with_observe_number():
    core = connected_core()
    [reply] = observe_rpc(core, ref=60)
    assert (reply.ref, dotted(reply), reply.payload, reply.content_format) == (
        60, "2.03", b"", None)
    assert isinstance(reply.observe, int)


def test_observe_rpc_by_unconnected_device_connects_it_first():
    core = linked_core()
    actions = handled(core, get(60, "rpc", observe=0), NOW)
    assert [p.topic for p in of(actions, Publish)] == [CONNECT]
    [reply] = of(actions, Reply)
    assert dotted(reply) == "2.03" and reply.observe is not None


def test_server_rpc_is_notified_2_05_with_id_method_params():
    core = connected_core()
    [reply] = observe_rpc(core, token=b"\xb1")
    [notify] = server_rpc(core, 7, "setGpio", {"pin": 4, "on": True})
    assert isinstance(notify, Notify)
    assert (notify.code, notify.token, notify.remote) == (codes.CONTENT, b"\xb1", PEER)
    assert payload_of(notify) == {"id": 7, "method": "setGpio", "params": {"pin": 4, "on": True}}
    assert notify.observe > reply.observe


def test_server_rpcs_wait_for_an_observer_and_are_delivered_in_order_on_registration():
    core = connected_core()
    for rpc_id in (1, 2, 3):
        assert visible(server_rpc(core, rpc_id, now=NOW + rpc_id)) == []
    seen = delivered(core, observe_rpc(core, now=NOW + 5), NOW + 5)
    [reply] = of(seen, Reply)
    assert dotted(reply) == "2.03"
    notifies = of(seen, Notify)
    assert [payload_of(n)["id"] for n in notifies] == [1, 2, 3]
    assert seen.index(reply) < seen.index(notifies[0])


def test_waiting_rpcs_go_one_at_a_time_to_a_con_observer():
    core = connected_core()
    server_rpc(core, 1)
    server_rpc(core, 2)
    [first] = of(observe_rpc(core), Notify)
    assert payload_of(first)["id"] == 1
    [second] = core.on_notified(first.ref, "ack", NOW + 1)
    assert payload_of(second)["id"] == 2
    assert core.on_notified(second.ref, "ack", NOW + 2) == []


def test_an_ended_dtls_session_is_no_longer_an_observer_and_its_rpcs_wait_again():
    core = connected_core()
    session = object()  # a DTLS session: the peer is the session object, not an address
    observe_rpc(core, remote=session)
    assert core.subscriptions.observers.get("Dev A", "rpc") is not None
    [notify] = server_rpc(core, 1)
    assert notify.remote is session
    assert core.on_notified(notify.ref, "delivered", NOW) == []  # sent NON: not held again
    [ended] = of(core.on_peer_gone(session, NOW + 1), Log)
    assert "ended (session ended)" in text(ended)
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert visible(server_rpc(core, 2, now=NOW + 2)) == []  # nothing to the dead session
    notifies = of(delivered(core, observe_rpc(core, remote=PEER, now=NOW + 3), NOW + 3), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [2]
    assert core.on_peer_gone(object(), NOW + 4) == []  # another peer: nothing ends


def test_waiting_rpcs_are_bounded_by_rpc_queue_size():
    core = connected_core(rpc_queue_size=2)
    server_rpc(core, 1)
    server_rpc(core, 2)
    dropped = server_rpc(core, 3)
    assert [log.level for log in of(dropped, Log)] == ["warn"]
    notifies = of(delivered(core, observe_rpc(core)), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [1, 2]


def test_waiting_rpcs_expire_after_rpc_queue_ttl():
    core = connected_core(rpc_queue_ttl=60)
    server_rpc(core, 1, now=NOW)
    server_rpc(core, 2, now=NOW + 30)
    notifies = of(delivered(core, observe_rpc(core, now=NOW + 61), NOW + 61), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [2]


def test_waiting_rpcs_expire_on_tick():
    core = connected_core(rpc_queue_ttl=60)
    server_rpc(core, 1, now=NOW)
    server_rpc(core, 2, now=NOW + 30)
    assert of(core.on_tick(NOW + 59), Log) == []
    logs = of(core.on_tick(NOW + 60), Log)
    assert len(logs) == 1 and "RPC 1 " in text(logs[0])
    notifies = of(delivered(core, observe_rpc(core, now=NOW + 61), NOW + 61), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [2]


def test_rpc_in_flight_when_its_notification_times_out_is_delivered_after_re_observe():
    core = connected_core(rpc_queue_ttl=60)
    observe_rpc(core, token=b"\xb1")
    [first] = server_rpc(core, 1)
    assert server_rpc(core, 2) == []  # waits behind the CON in flight
    actions = core.on_notified(first.ref, "timeout", NOW + 30)
    assert visible(actions) == []
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert visible(server_rpc(core, 3, now=NOW + 31)) == []  # no observer now: waits

    seen = observe_rpc(core, ref=61, token=b"\xb2", remote=OTHER_PEER, now=NOW + 35)
    [again] = of(seen, Notify)
    assert (again.token, again.remote) == (b"\xb2", OTHER_PEER)
    delivered = [payload_of(again)["id"]]
    while True:
        nxt = core.on_notified(again.ref, "ack", NOW + 36)
        if not nxt:
            break
        [again] = nxt
        delivered.append(payload_of(again)["id"])
    assert delivered == [1, 2, 3]


def test_rpc_timeout_ends_every_relation_of_that_peer():
    core = linked_core()
    observe_attributes(core, token=b"\xa1", remote=PEER)
    observe_rpc(core, token=b"\xb1", remote=PEER)
    [first] = server_rpc(core, 1)
    core.on_notified(first.ref, "timeout", NOW + 30)
    assert core.subscriptions.observers.get("Dev A", "attributes") is None
    assert visible(push(core, {"s": 5}, now=NOW + 31)) == []


def test_rpc_in_flight_at_a_real_con_timeout_has_expired_with_defaults_and_is_not_offered_again():
    core = GatewayCore(core_config(), lambda token: {"tok": DEV_A}.get(token))
    core.on_link_up(NOW)
    observe_rpc(core, token=b"\xb1")
    [first] = server_rpc(core, 1)
    # RFC 7252 defaults (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4): the earliest possible timeout,
    # past the default rpc_queue_ttl (60 s) counted from the RPC's arrival
    core.on_notified(first.ref, "timeout", NOW + 62)
    assert of(observe_rpc(core, token=b"\xb2", now=NOW + 63), Notify) == []
    [log] = of(core.on_tick(NOW + 63), Log)
    assert "RPC 1 for Dev A expired" in text(log)
    assert core.stats["rpc_expired"] == 1


def rpcs_held(core, device="Dev A"):
    """Server RPCs the core holds for ``device``: waiting for an observer, queued or in
    flight to it (what costs memory)."""
    waiting = len(core.rpc.waiting.get(device, ()))
    relation = core.subscriptions.observers.get(device, "rpc")
    if relation is None:
        return waiting
    return waiting + len(relation.queue) + (relation.in_flight is not None)


def test_300_rpcs_to_a_device_that_never_acks_stay_bounded_and_expire_across_a_cancelled_relation():
    core = connected_core(rpc_queue_size=100, rpc_queue_ttl=60)
    observe_rpc(core, token=b"\xb1")
    sent, most = [], 0
    for n in range(300):
        sent += of(server_rpc(core, n + 1, now=NOW + n * 0.01), Notify)
        most = max(most, rpcs_held(core))
        sent += of(core.on_tick(NOW + n * 0.01), Notify)
    assert most == 100
    assert [payload_of(n)["id"] for n in sent] == [1]  # the device never ACKs it
    assert core.stats["rpc_dropped"] == 200
    # the CON notification times out at 45 s: the relation ends, its RPCs wait
    assert visible(core.on_notified(sent[0].ref, "timeout", NOW + 45)) == []
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert rpcs_held(core) == 100
    # the device registers again at 71 s, past the 60 s the RPCs had: none is delivered
    assert of(observe_rpc(core, token=b"\xb2", now=NOW + 71), Notify) == []
    core.on_tick(NOW + 71)
    assert rpcs_held(core) == 0
    assert core.stats["rpc_expired"] == 100
    # a new RPC goes out at once
    [notify] = of(server_rpc(core, 301, now=NOW + 72), Notify)
    assert payload_of(notify)["id"] == 301


def test_rpcs_queued_behind_an_unacknowledged_con_notification_expire_and_are_not_sent():
    core = connected_core(rpc_queue_size=10, rpc_queue_ttl=60)
    observe_rpc(core)
    [first] = server_rpc(core, 1, now=NOW)
    assert server_rpc(core, 2, now=NOW + 1) == []
    assert server_rpc(core, 3, now=NOW + 30) == []
    # the device ACKs the first at 61 s: RPC 2 (arrived at 1 s) is past its time, RPC 3 is not
    [third] = core.on_notified(first.ref, "ack", NOW + 61)
    assert payload_of(third)["id"] == 3
    [log] = of(core.on_tick(NOW + 61), Log)
    assert "RPC 2 for Dev A expired" in text(log)
    assert core.stats["rpc_expired"] == 1


def test_expired_rpcs_behind_a_con_notification_are_freed_by_the_tick():
    core = connected_core(rpc_queue_size=100, rpc_queue_ttl=60)
    observe_rpc(core)
    for n in range(50):
        server_rpc(core, n + 1, now=NOW)
    assert rpcs_held(core) == 50
    core.on_tick(NOW + 59)
    assert rpcs_held(core) == 50
    logs = of(core.on_tick(NOW + 60), Log)
    assert rpcs_held(core) == 1  # the one in flight: it was sent, and is awaited
    assert len(logs) == 1 and text(logs[0]).startswith("49 RPCs (2, 3, 4,")
    assert core.stats["rpc_expired"] == 49


def test_a_full_rpc_queue_drops_new_rpcs_with_one_warning_and_takes_rpcs_again_once_expired():
    core = connected_core(rpc_queue_size=2, rpc_queue_ttl=60)
    server_rpc(core, 1, now=NOW)
    server_rpc(core, 2, now=NOW)
    logs = of(server_rpc(core, 3, now=NOW + 1) + server_rpc(core, 4, now=NOW + 2), Log)
    assert [log.level for log in logs] == ["warn"]
    assert core.stats["rpc_dropped"] == 2
    # past the TTL of 1 and 2 the queue takes RPCs again, without a tick in between
    server_rpc(core, 5, now=NOW + 61)
    notifies = of(delivered(core, observe_rpc(core, now=NOW + 62), NOW + 62), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [5]


@pytest.mark.parametrize("observing", [False, True])
def test_20000_rpcs_of_2_kb_hold_at_most_rpc_queue_size_and_nothing_after_the_ttl(observing):
    core = connected_core(rpc_queue_size=100, rpc_queue_ttl=60)
    if observing:
        observe_rpc(core)  # a device that never ACKs
    blob = "x" * 2048
    most = 0
    for n in range(20000):
        now = NOW + n * 0.005  # 100 s in all
        server_rpc(core, n + 1, params={"blob": blob}, now=now)
        most = max(most, rpcs_held(core))
        if n % 200 == 0:
            core.on_tick(now)
    assert most == 100
    core.on_tick(NOW + 100 + 60)
    assert rpcs_held(core) == (1 if observing else 0)  # the one in flight, if any
    assert core.subscriptions.observers.expired == [] and core.rpc.expired == []
    held = core.stats["rpc_expired"] + rpcs_held(core)
    assert held + core.stats["rpc_dropped"] == 20000


def test_rpc_reset_by_device_ends_the_relation():
    core = connected_core()
    observe_rpc(core)
    [notify] = server_rpc(core, 1)
    core.on_notified(notify.ref, "reset", NOW + 1)
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert visible(server_rpc(core, 2, now=NOW + 2)) == []


def test_get_rpc_without_observe_gets_4_00():
    core = connected_core()
    [reply] = handled(core, get(60, "rpc"), NOW)
    assert (reply.ref, dotted(reply)) == (60, "4.00")
    assert core.subscriptions.observers.get("Dev A", "rpc") is None


def test_get_rpc_with_observe_1_answers_2_03_and_ends_the_relation():
    core = connected_core()
    observe_rpc(core, token=b"\xb1")
    [reply] = handled(core, get(61, "rpc", observe=1, token=b"\xb1"), NOW)
    assert (reply.ref, dotted(reply), reply.observe) == (61, "2.03", None)
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert visible(server_rpc(core, 1)) == []


def test_get_rpc_with_observe_1_and_another_token_keeps_the_relation():
    core = connected_core()
    observe_rpc(core, token=b"\xb1")
    [reply] = handled(core, get(61, "rpc", observe=1, token=b"\xff"), NOW)
    assert dotted(reply) == "2.03"
    [notify] = server_rpc(core, 1)
    assert notify.token == b"\xb1"


# -- RPC replies from the device ---------------------------------------------------------------

def test_post_rpc_reply_publishes_on_gateway_rpc_and_replies_2_01_once_secured():
    core = connected_core()
    actions = handled(core, post(5, "rpc/42", b'{"result": "ok"}'), NOW)
    # no 2.01 straight away: only once the broker (or the durable outbox) has the message
    assert of(actions, Reply) == []
    seen = run(core, actions)
    [publish] = [p for p in of(seen, Publish) if p.topic == GATEWAY_RPC]
    assert json.loads(publish.payload) == {"device": "Dev A", "id": 42, "data": {"result": "ok"}}
    assert publish.device == "Dev A"
    assert of(seen, Reply) == [Reply(5, codes.CREATED)]


def test_post_rpc_reply_by_unconnected_device_is_published_after_connect():
    core = linked_core()
    seen = run(core, handled(core, post(5, "rpc/42", b'"done"'), NOW))
    assert [p.topic for p in of(seen, Publish)] == [CONNECT, GATEWAY_RPC]
    assert json.loads(of(seen, Publish)[1].payload) == {"device": "Dev A", "id": 42,
                                                        "data": "done"}
    assert of(seen, Reply) == [Reply(5, codes.CREATED)]


@pytest.mark.parametrize("payload", [b"not json", b"", b"{'a': 1}", b"\xff\xfe"])
def test_post_rpc_reply_that_is_not_json_gets_4_00_and_publishes_nothing(payload):
    core = connected_core()
    actions = handled(core, post(5, "rpc/42", payload), NOW)
    assert of(actions, Publish) == []
    [reply] = actions
    assert (reply.ref, dotted(reply)) == (5, "4.00")


# -- client-side RPC ----------------------------------------------------------------------------

def test_client_rpc_publishes_a_gateway_rpc_request_with_the_configured_method():
    core = connected_core(client_rpc_method="bridgeRpc")
    [publish] = handled(core, post(5, "rpc", b'{"method": "getTime", "params": {"tz": 1}}'),
                                NOW)
    assert isinstance(publish, Publish)
    assert publish.topic.startswith(RPC_REQUEST)
    assert publish.topic[len(RPC_REQUEST):].isdigit()
    assert json.loads(publish.payload) == {
        "method": "bridgeRpc",
        "params": {"device": "Dev A", "method": "getTime", "params": {"tz": 1}}}
    assert core.on_published(publish.ref, 0, NOW) == []  # the answer is the response message


def test_client_rpc_without_params_forwards_null_params():
    core = connected_core()
    [publish] = handled(core, post(5, "rpc", b'{"method": "getTime"}'), NOW)
    assert json.loads(publish.payload)["params"] == {
        "device": "Dev A", "method": "getTime", "params": None}


def test_client_rpc_uses_distinct_request_numbers():
    core = connected_core()
    [p1] = handled(core, post(5, "rpc", b'{"method": "a"}'), NOW)
    [p2] = handled(core, post(6, "rpc", b'{"method": "b"}'), NOW)
    assert p1.topic != p2.topic


def test_client_rpc_response_is_replied_2_05_with_its_body_once():
    core = connected_core()
    [publish] = handled(core, post(5, "rpc", b'{"method": "getTime"}'), NOW)
    n = publish.topic[len(RPC_REQUEST):]
    core.on_published(publish.ref, 0, NOW)
    body = b'{"time": "2024-01-01T00:00:00Z"}'
    [reply] = core.on_message(RPC_RESPONSE + n, body, NOW + 1)
    assert (reply.ref, dotted(reply), reply.payload, reply.content_format) == (
        5, "2.05", body, codes.APPLICATION_JSON)
    assert core.on_message(RPC_RESPONSE + n, body, NOW + 2) == []
    assert visible(core.on_tick(NOW + 30)) == []


def test_client_rpc_responses_go_to_the_right_requests():
    core = connected_core()
    [p1] = handled(core, post(5, "rpc", b'{"method": "a"}'), NOW)
    [p2] = handled(core, post(6, "rpc", b'{"method": "b"}'), NOW)
    [r2] = core.on_message(RPC_RESPONSE + p2.topic[len(RPC_REQUEST):], b'"b"', NOW)
    [r1] = core.on_message(RPC_RESPONSE + p1.topic[len(RPC_REQUEST):], b'"a"', NOW)
    assert (r1.ref, r1.payload, r2.ref, r2.payload) == (5, b'"a"', 6, b'"b"')


def test_client_rpc_without_an_answer_times_out_with_5_04():
    core = connected_core()
    [publish] = handled(core, post(5, "rpc", b'{"method": "getTime"}'), NOW)
    core.on_published(publish.ref, 0, NOW)
    assert visible(core.on_tick(NOW + 9.9)) == []
    [reply] = visible(core.on_tick(NOW + 10))
    assert (reply.ref, dotted(reply)) == (5, "5.04")
    n = publish.topic[len(RPC_REQUEST):]
    assert core.on_message(RPC_RESPONSE + n, b"{}", NOW + 11) == []


@pytest.mark.parametrize("payload", [
    b'{"params": {}}', b'{"method": ""}', b'{"method": 5}', b'["getTime"]', b"getTime", b""])
def test_client_rpc_without_a_method_gets_4_00_and_publishes_nothing(payload):
    core = connected_core()
    actions = handled(core, post(5, "rpc", payload), NOW)
    assert of(actions, Publish) == []
    [reply] = actions
    assert (reply.ref, dotted(reply)) == (5, "4.00")


def test_client_rpc_while_link_down_gets_5_03():
    core = connected_core()
    core.on_link_down(NOW)
    [reply] = handled(core, post(5, "rpc", b'{"method": "getTime"}'), NOW)
    assert dotted(reply) == "5.03"


# -- gateway RPCs: rename and delete --------------------------------------------------------------

def rename_rpc(core, params, n=1, now=NOW):
    body = dumps({"id": n, "method": "gateway_device_renamed", "params": params})
    return core.on_message(RPC_REQUEST + str(n), body, now)


def test_gateway_device_renamed_returns_rename_and_later_uplinks_use_the_new_name():
    registry = {"tok": DEV_A}
    core = make_core(registry)
    core.on_link_up(NOW)
    run(core, handled(core, post(1, "telemetry", b'{"t": 1}'), NOW))

    actions = rename_rpc(core, {"Dev A": "Boiler"})
    assert actions == [RenameDevice("Dev A", "Boiler")]
    registry["tok"] = Device("Boiler", "thermo")  # what the edge does with RenameDevice

    seen = run(core, handled(core, post(2, "telemetry", b'{"t": 2}'), NOW + 1), NOW + 1)
    [data] = [p for p in of(seen, Publish) if p.topic == "v1/gateway/telemetry"]
    assert list(json.loads(data.payload)) == ["Boiler"]
    assert all(p.device == "Boiler" for p in of(seen, Publish))
    assert of(seen, Reply) == [Reply(2, codes.CREATED)]


def test_gateway_device_renamed_moves_observe_relations_to_the_new_name():
    core = linked_core()
    observe_attributes(core, token=b"\xa1")
    observe_rpc(core, token=b"\xb1")
    rename_rpc(core, {"Dev A": "Boiler"})
    assert visible(push(core, {"s": 1}, device="Dev A")) == []
    [notify] = push(core, {"s": 3}, device="Boiler")
    assert (notify.token, notify.device, payload_of(notify)) == (b"\xa1", "Boiler", {"s": 3})
    [rpc] = server_rpc(core, 1, device="Boiler")
    assert rpc.token == b"\xb1"


def test_gateway_device_renamed_moves_waiting_rpcs_to_the_new_name():
    registry = {"tok": DEV_A}
    core = make_core(registry)
    core.on_link_up(NOW)
    server_rpc(core, 1)
    rename_rpc(core, {"Dev A": "Boiler"})
    registry["tok"] = Device("Boiler", "thermo")
    notifies = of(delivered(core, observe_rpc(core)), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [1]


def test_rename_during_observe_refresh_registers_the_observer_under_the_new_name():
    registry = {"tok": DEV_A}
    core = make_core(registry)
    core.on_link_up(NOW)
    seen = run(core, handled(core, get(5, "attributes", observe=0), NOW))
    [discover] = attribute_requests(seen)
    rename_rpc(core, {"Dev A": "Boiler"})
    registry["tok"] = Device("Boiler", "thermo")
    seen = answer(core, discover, values={"s": 1})
    for scoped in attribute_requests(seen):
        seen += answer(core, scoped, values={"s": 1})
    [reply] = of(seen, Reply)
    assert (dotted(reply), payload_of(reply)) == ("2.05", {"s": 1})
    assert [n.device for n in push(core, {"s": 2}, device="Boiler")] == ["Boiler"]


def test_rpc_in_flight_across_a_rename_is_delivered_after_re_observe_under_the_new_name():
    registry = {"tok": DEV_A}
    core = make_core(registry)
    core.on_link_up(NOW)
    observe_rpc(core, token=b"\xb1")
    [first] = server_rpc(core, 1)
    rename_rpc(core, {"Dev A": "Boiler"})
    registry["tok"] = Device("Boiler", "thermo")
    core.on_notified(first.ref, "timeout", NOW + 30)
    notifies = of(observe_rpc(core, token=b"\xb2", now=NOW + 35), Notify)
    assert [payload_of(n)["id"] for n in notifies] == [1]


def test_gateway_device_deleted_returns_delete_and_ends_its_relations():
    core = linked_core()
    observe_attributes(core)
    observe_rpc(core)
    body = dumps({"id": 2, "method": "gateway_device_deleted", "params": "Dev A"})
    actions = core.on_message(RPC_REQUEST + "2", body, NOW)
    assert actions == [DeleteDevice("Dev A")]
    assert core.subscriptions.observers.get("Dev A", "attributes") is None
    assert core.subscriptions.observers.get("Dev A", "rpc") is None
    assert visible(push(core, {"s": 3})) == []
    assert visible(server_rpc(core, 1)) == []


def test_gateway_device_deleted_drops_rpcs_waiting_for_it():
    core = linked_core()
    server_rpc(core, 1)
    body = dumps({"id": 2, "method": "gateway_device_deleted", "params": "Dev A"})
    core.on_message(RPC_REQUEST + "2", body, NOW)
    assert of(delivered(core, observe_rpc(core)), Notify) == []


# -- link loss ----------------------------------------------------------------------------

def test_link_down_answers_pending_attribute_read_and_client_rpc_with_5_03():
    core = connected_core()
    [body] = start_read(core, 1, ("sharedKeys=s",))
    [publish] = handled(core, post(2, "rpc", b'{"method": "getTime"}'), NOW)
    core.on_published(publish.ref, 0, NOW)

    actions = core.on_link_down(NOW + 1)
    assert sorted((r.ref, dotted(r), r.max_age) for r in of(actions, Reply)) == [
        (1, "5.03", 5), (2, "5.03", 5)]
    # late answers and the timer produce nothing more
    assert answer(core, body, NOW + 2, value=1) == []
    n = publish.topic[len(RPC_REQUEST):]
    assert core.on_message(RPC_RESPONSE + n, b"{}", NOW + 2) == []
    assert visible(core.on_tick(NOW + 30)) == []


def test_link_down_answers_a_pending_observe_registration_with_5_03():
    core = linked_core()
    seen = run(core, handled(core, get(5, "attributes", observe=0), NOW))
    [discover] = attribute_requests(seen)
    [reply] = core.on_link_down(NOW + 1)
    assert (reply.ref, dotted(reply)) == (5, "5.03")
    assert answer(core, discover, NOW + 2, values={"s": 1}) == []
    assert core.subscriptions.observers.get("Dev A", "attributes") is None


def test_link_down_keeps_observe_relations():
    core = linked_core()
    observe_attributes(core)
    core.on_link_down(NOW + 1)
    [notify] = push(core, {"s": 7}, now=NOW + 2)
    assert payload_of(notify) == {"s": 7}
