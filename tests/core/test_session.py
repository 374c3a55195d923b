"""Tests of the pure gateway session core (bridge.core.session.GatewayCore)."""

import json

import pytest

from bridge.core import codes
from bridge.core.actions import Device, Publish, Reply, Request
from bridge.core.session import CoreSettings, GatewayCore

NOW = 1_700_000_000.5
DEV_A = Device("Dev A", "thermo")
TELEMETRY = b'{"t": 21.5}'


def make_core(devices=None, **settings):
    devices = {"tok": DEV_A} if devices is None else devices
    options = dict(ack_timeout=10, idle_timeout=600)
    options.update(settings)
    return GatewayCore(CoreSettings(**options), lambda token: devices.get(token))


def req(ref, feature="telemetry", payload=TELEMETRY, token="tok", method=codes.POST):
    return Request(ref, method, ("api", "v1", token, feature), payload)


def dotted(action):
    assert isinstance(action, Reply), action
    return codes.dotted(action.code)


def publishes(actions):
    return [a for a in actions if isinstance(a, Publish)]


def replies(actions):
    return [a for a in actions if isinstance(a, Reply)]


def connected_core(now=NOW, **settings):
    """A core with the link up and Dev A already connected upstream (one full exchange done)."""
    core = make_core(**settings)
    core.on_link_up(now)
    [connect] = core.on_request(req(900), now)
    [data] = core.on_published(connect.ref, 0, now)
    assert core.on_published(data.ref, 0, now) == [Reply(900, codes.CREATED)]
    return core


# -- authentication and link state --------------------------------------------

def test_unknown_token_gets_4_01():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = core.on_request(req(1, token="nope"), NOW)
    assert reply.ref == 1
    assert dotted(reply) == "4.01"
    assert "nope" not in reply.reason and b"nope" not in reply.payload


def test_certificate_form_without_token_gets_4_01():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = core.on_request(Request(1, codes.POST, ("api", "v1", "telemetry"), TELEMETRY), NOW)
    assert dotted(reply) == "4.01"


def test_unknown_token_gets_4_01_even_when_link_is_down():
    [reply] = make_core().on_request(req(1, token="nope"), NOW)
    assert dotted(reply) == "4.01"


def test_link_down_gets_5_03_with_max_age():
    core = make_core()  # link never came up
    [reply] = core.on_request(req(1), NOW)
    assert (reply.ref, dotted(reply), reply.max_age) == (1, "5.03", 5)


def test_link_down_max_age_follows_retry_after_setting():
    [reply] = make_core(retry_after=17).on_request(req(1), NOW)
    assert (dotted(reply), reply.max_age) == ("5.03", 17)


def test_routing_error_gets_its_code_and_text_diagnostic():
    core = make_core()
    core.on_link_up(NOW)
    [reply] = core.on_request(req(1, feature="bogus"), NOW)
    assert dotted(reply) == "4.00"
    assert reply.content_format == codes.TEXT_PLAIN
    assert reply.payload == reply.reason.encode("utf-8") and reply.payload


# -- delivery: connect first, then data, 2.01 only after PUBACK --------------------

def test_first_uplink_publishes_connect_then_data_then_replies_2_01():
    core = make_core()
    assert core.on_link_up(NOW) == []

    actions = core.on_request(req(1), NOW)
    assert len(actions) == 1
    [connect] = actions
    assert isinstance(connect, Publish)
    assert connect.topic == "v1/gateway/connect"
    assert connect.payload == b'{"device":"Dev A","type":"thermo"}'
    assert connect.device == "Dev A"

    actions = core.on_published(connect.ref, 0, NOW)
    assert len(actions) == 1
    [data] = actions
    assert isinstance(data, Publish)
    assert data.topic == "v1/gateway/telemetry"
    assert data.ref != connect.ref
    assert json.loads(data.payload) == {"Dev A": [{"ts": int(NOW * 1000), "values": {"t": 21.5}}]}

    assert core.on_published(data.ref, 0, NOW) == [Reply(1, codes.CREATED)]


def test_connected_device_publishes_data_immediately():
    core = connected_core()
    [data] = core.on_request(req(2), NOW + 1)
    assert isinstance(data, Publish) and data.topic == "v1/gateway/telemetry"
    assert core.on_published(data.ref, 0, NOW + 1) == [Reply(2, codes.CREATED)]


def test_second_request_while_connect_pending_waits_for_connect():
    core = make_core()
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1, payload=b'{"n": 1}'), NOW)
    assert core.on_request(req(2, payload=b'{"n": 2}'), NOW) == []  # no second connect, no data yet

    first, second = core.on_published(connect.ref, 0, NOW)
    assert [json.loads(p.payload)["Dev A"][0]["values"] for p in (first, second)] == [
        {"n": 1}, {"n": 2}]
    assert core.on_published(second.ref, 0, NOW) == [Reply(2, codes.CREATED)]
    assert core.on_published(first.ref, 0, NOW) == [Reply(1, codes.CREATED)]


def test_puback_for_unknown_ref_is_ignored():
    core = connected_core()
    assert core.on_published(12345, 0, NOW) == []


def test_each_request_is_answered_once():
    core = connected_core()
    [data] = core.on_request(req(2), NOW)
    assert core.on_published(data.ref, 0, NOW) == [Reply(2, codes.CREATED)]
    assert core.on_published(data.ref, 0, NOW) == []


@pytest.mark.parametrize("reason_code,expected,max_age", [
    (0x97, "5.03", 5),   # quota exceeded: retry later
    (0x99, "4.00", None),  # payload format invalid: the device's fault
    (0x80, "5.02", None),  # unspecified error
    (0x87, "5.02", None),  # not authorized
], ids=["quota_0x97", "payload_0x99", "unspecified_0x80", "not_authorized_0x87"])
def test_mqtt5_puback_refusal_maps_to_coap_code(reason_code, expected, max_age):
    core = connected_core()
    [data] = core.on_request(req(2), NOW)
    [reply] = core.on_published(data.ref, reason_code, NOW)
    assert (reply.ref, dotted(reply), reply.max_age) == (2, expected, max_age)


def test_puback_reason_below_0x80_is_success():
    core = connected_core()
    [data] = core.on_request(req(2), NOW)
    assert core.on_published(data.ref, 0x10, NOW) == [Reply(2, codes.CREATED)]  # no matching subscribers


def test_refused_connect_answers_waiting_requests_5_02_without_data_publish():
    core = make_core()
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1), NOW)
    assert core.on_request(req(2), NOW) == []
    actions = core.on_published(connect.ref, 0x87, NOW)
    assert publishes(actions) == []
    replies = [a for a in actions if isinstance(a, Reply)]
    assert sorted((r.ref, dotted(r)) for r in replies) == [(1, "5.02"), (2, "5.02")]


def test_next_uplink_after_refused_connect_sends_connect_again():
    core = make_core()
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1), NOW)
    core.on_published(connect.ref, 0x80, NOW)
    [again] = core.on_request(req(2), NOW + 1)
    assert again.topic == "v1/gateway/connect" and again.ref != connect.ref


# -- timeouts -------------------------------------------------------------------------

def test_puback_timeout_gets_5_03_and_late_puback_gets_no_reply():
    core = connected_core()
    [data] = core.on_request(req(2), NOW)
    assert core.on_tick(NOW + 9) == []
    [reply] = core.on_tick(NOW + 11)
    assert (reply.ref, dotted(reply), reply.max_age) == (2, "5.03", 5)
    assert core.on_published(data.ref, 0, NOW + 12) == []
    assert core.on_tick(NOW + 20) == []


def test_connect_puback_timeout_answers_waiting_request_5_03_and_next_uplink_reconnects():
    core = make_core()
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1), NOW)
    [reply] = core.on_tick(NOW + 11)
    assert (reply.ref, dotted(reply)) == (1, "5.03")
    assert core.on_published(connect.ref, 0, NOW + 12) == []  # late connect PUBACK: nothing to send
    [again] = core.on_request(req(2), NOW + 13)
    assert again.topic == "v1/gateway/connect" and again.ref != connect.ref


def test_on_not_sent_connect_answers_waiting_requests_5_03():
    core = make_core()
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1), NOW)
    core.on_request(req(2), NOW)
    actions = core.on_not_sent(connect.ref, NOW)
    assert sorted((r.ref, dotted(r), r.max_age) for r in actions) == [(1, "5.03", 5), (2, "5.03", 5)]
    assert core.on_tick(NOW + 11) == []  # already answered


def test_on_not_sent_data_answers_5_03():
    core = connected_core()
    [data] = core.on_request(req(2), NOW)
    [reply] = core.on_not_sent(data.ref, NOW)
    assert (reply.ref, dotted(reply)) == (2, "5.03")
    assert core.on_published(data.ref, 0, NOW) == []


# -- link loss and recovery ---------------------------------------------------------------

def test_link_down_answers_all_pending_requests_5_03():
    core = connected_core()
    [d2] = core.on_request(req(2), NOW)
    [d3] = core.on_request(req(3), NOW)
    actions = core.on_link_down(NOW + 1)
    assert sorted((r.ref, dotted(r), r.max_age) for r in actions) == [(2, "5.03", 5), (3, "5.03", 5)]
    # late PUBACKs and the timer produce nothing more
    assert core.on_published(d2.ref, 0, NOW + 2) == []
    assert core.on_tick(NOW + 20) == []


def test_link_down_answers_requests_waiting_for_connect():
    core = make_core()
    core.on_link_up(NOW)
    core.on_request(req(1), NOW)
    [reply] = core.on_link_down(NOW)
    assert (reply.ref, dotted(reply)) == (1, "5.03")


def test_requests_while_link_down_get_5_03():
    core = connected_core()
    core.on_link_down(NOW + 1)
    [reply] = core.on_request(req(2), NOW + 2)
    assert dotted(reply) == "5.03" and reply.max_age == 5


def test_link_up_reconnects_recently_active_devices_only():
    dev_b = Device("Dev B", "meter")
    core = make_core({"tok": DEV_A, "tokb": dev_b})
    core.on_link_up(NOW)
    for ref, token, when in ((1, "tok", NOW), (2, "tokb", NOW + 500)):
        [connect] = core.on_request(req(ref, token=token), when)
        [data] = core.on_published(connect.ref, 0, when)
        core.on_published(data.ref, 0, when)
    core.on_link_down(NOW + 550)

    actions = core.on_link_up(NOW + 700)  # Dev A idle 700 s (> 600), Dev B idle 200 s
    assert [(p.topic, p.payload) for p in actions] == [
        ("v1/gateway/connect", b'{"device":"Dev B","type":"meter"}')]


def test_link_up_at_exact_idle_horizon_still_reconnects():
    core = connected_core()
    core.on_link_down(NOW + 1)
    [connect] = core.on_link_up(NOW + 600)
    assert connect.topic == "v1/gateway/connect"


def test_request_after_reconnect_waits_for_resent_connect():
    core = connected_core()
    core.on_link_down(NOW + 1)
    [connect] = core.on_link_up(NOW + 2)
    assert core.on_request(req(2), NOW + 3) == []  # connect already in flight
    [data] = core.on_published(connect.ref, 0, NOW + 3)
    assert data.topic == "v1/gateway/telemetry"
    assert core.on_published(data.ref, 0, NOW + 3) == [Reply(2, codes.CREATED)]


def test_forgotten_device_sends_connect_on_next_uplink():
    core = connected_core()
    core.on_link_down(NOW + 1)
    assert core.on_link_up(NOW + 700) == []
    [connect] = core.on_request(req(2), NOW + 701)
    assert connect.topic == "v1/gateway/connect"


# -- idle disconnect --------------------------------------------------------------------------

def test_idle_device_gets_disconnect_publish_after_idle_timeout():
    core = connected_core()
    assert core.on_tick(NOW + 600) == []  # not idle *longer* than idle_timeout yet
    [disconnect] = core.on_tick(NOW + 601)
    assert isinstance(disconnect, Publish)
    assert (disconnect.topic, disconnect.payload) == (
        "v1/gateway/disconnect", b'{"device":"Dev A"}')
    assert core.on_tick(NOW + 700) == []  # only once
    assert core.on_published(disconnect.ref, 0, NOW + 700) == []


def test_activity_postpones_idle_disconnect():
    core = connected_core()
    [data] = core.on_request(req(2), NOW + 300)
    core.on_published(data.ref, 0, NOW + 300)
    assert core.on_tick(NOW + 601) == []
    assert [p.topic for p in core.on_tick(NOW + 901)] == ["v1/gateway/disconnect"]


def test_device_reconnects_after_idle_disconnect():
    core = connected_core()
    core.on_tick(NOW + 601)
    [connect] = core.on_request(req(2), NOW + 602)
    assert connect.topic == "v1/gateway/connect"


def test_no_idle_disconnect_while_link_down():
    core = connected_core()
    core.on_link_down(NOW + 1)
    assert core.on_tick(NOW + 700) == []


# -- payload handling -------------------------------------------------------------------------

def test_oversized_payload_gets_4_13_with_size1_and_no_publish():
    core = make_core(max_packet_size=200)
    core.on_link_up(NOW)
    actions = core.on_request(req(1, payload=b'{"v": "%s"}' % (b"x" * 300)), NOW)
    assert publishes(actions) == []
    [reply] = actions
    assert (reply.ref, dotted(reply), reply.size1) == (1, "4.13", 200)
    assert b"200" in reply.payload


def test_payload_exactly_at_packet_limit_is_accepted_and_one_more_byte_is_not():
    # gateway message for {"v": "<n x>"} from Dev A at NOW, QoS 1, MQTT 5:
    # topic 20 B; payload {"Dev A":[{"ts":1700000000500,"values":{"v":"..."}}]} = 50 + n B
    # packet = 1 + 2 (remaining length) + 2 + 20 + 2 + 1 + 50 + n = 78 + n
    n = 200 - 78
    core = make_core(max_packet_size=200)
    core.on_link_up(NOW)
    [connect] = core.on_request(req(1, payload=b'{"v": "%s"}' % (b"x" * n)), NOW)
    assert connect.topic == "v1/gateway/connect"
    [data] = core.on_published(connect.ref, 0, NOW)
    assert len(data.payload) == 50 + n
    [reply] = core.on_request(req(2, payload=b'{"v": "%s"}' % (b"x" * (n + 1))), NOW)
    assert (dotted(reply), reply.size1) == ("4.13", 200)


def test_telemetry_without_ts_carries_receipt_time_in_ms():
    core = connected_core()
    [data] = core.on_request(req(2, payload=b'{"a": 1}'), NOW + 1.25)
    assert data.payload == b'{"Dev A":[{"ts":%d,"values":{"a":1}}]}' % int((NOW + 1.25) * 1000)


def test_telemetry_with_ts_keeps_device_time():
    core = connected_core()
    [data] = core.on_request(req(2, payload=b'{"ts": 1000, "values": {"a": 1}}'), NOW)
    assert data.payload == b'{"Dev A":[{"ts":1000,"values":{"a":1}}]}'


def test_attributes_post_publishes_gateway_attributes():
    core = connected_core()
    [data] = core.on_request(req(2, feature="attributes", payload=b'{"fw": "1.0"}'), NOW)
    assert (data.topic, data.payload) == ("v1/gateway/attributes", b'{"Dev A":{"fw":"1.0"}}')
    assert core.on_published(data.ref, 0, NOW) == [Reply(2, codes.CREATED)]


def test_claim_post_with_empty_payload_publishes_defaults():
    core = connected_core()
    [data] = core.on_request(req(2, feature="claim", payload=b""), NOW)
    assert (data.topic, data.payload) == (
        "v1/gateway/claim", b'{"Dev A":{"secretKey":"","durationMs":0}}')


def test_bad_json_gets_4_00_and_nothing_is_published():
    core = connected_core()
    [reply] = core.on_request(req(2, payload=b"{nope"), NOW)
    assert dotted(reply) == "4.00"
    assert reply.content_format == codes.TEXT_PLAIN


def test_bad_json_from_new_device_does_not_send_connect():
    core = make_core()
    core.on_link_up(NOW)
    assert publishes(core.on_request(req(1, payload=b"[]"), NOW)) == []


@pytest.mark.parametrize("method,feature,expected", [
    (codes.GET, "telemetry", "4.00"),
    (codes.GET, "claim", "4.00"),
    (codes.GET, "rpc", "4.00"),  # /rpc needs Observe
    (codes.POST, "provision", "5.01"),
])
def test_unsupported_operations_are_refused_without_publish(method, feature, expected):
    core = connected_core()
    actions = core.on_request(req(2, feature=feature, method=method, payload=b'{"a": 1}'), NOW)
    assert publishes(actions) == []
    [reply] = actions
    assert dotted(reply) == expected


def test_ota_download_gets_5_01():
    core = connected_core()
    [reply] = core.on_request(Request(2, codes.GET, ("fw", "tok")), NOW)
    assert dotted(reply) == "5.01"
