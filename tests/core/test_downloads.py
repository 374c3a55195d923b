"""Package downloads in GatewayCore and their limits (issue #16 item 1).

Blocks of a package come from the bridge's cache: they must not spend the device's
request budget (``device_rate``, meant for requests that reach the platform) but a
byte budget of their own (``download_rate`` / ``download_burst``).
"""

import json

from bridge.core import codes
from bridge.core.actions import Device, Publish, Reply, Request, ServePackage
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled

NOW = 1_700_000_000.5
DEV_A = Device("Dev A", "thermo")
PEER = ("10.0.0.1", 5683)
ATTR_REQUEST = "v1/gateway/attributes/request"
ATTR_RESPONSE = "v1/gateway/attributes/response"
FW = {"fw_title": "blinker", "fw_version": "2.0", "fw_size": 1 << 20}
# the shipped defaults (conf/coapbridge.yaml)
SHIPPED = dict(device_rate=10.0, device_burst=20.0, peer_rate=1000.0, peer_burst=2000.0,
               download_rate=128 * 1024.0, download_burst=16 * 1024 * 1024.0)


def make_core(**settings):
    options = dict(SHIPPED, puback_timeout=10, idle_timeout=600, request_timeout=10)
    options.update(settings)
    core = GatewayCore(core_config(**options), {"tok": DEV_A}.get)
    core.on_link_up(NOW)
    return core


def fw_get(ref, block=None, query=()):
    """GET /fw/tok, for Block2 ``block`` = (number, size) or with a query."""
    return Request(ref, codes.GET, ("fw", "tok"), b"", tuple(query), remote=PEER, block2=block)


def run(core, actions, now=NOW):
    """Play the broker (every Publish acknowledged) and the platform (attribute requests
    answered with the package attributes FW). Returns every action seen."""
    seen, todo = [], list(actions)
    while todo:
        action = todo.pop(0)
        seen.append(action)
        if isinstance(action, Publish):
            todo += core.on_published(action.ref, 0, now)
            if action.topic == ATTR_REQUEST:
                body = json.loads(action.payload)
                answer = {"id": body["id"], "device": body["device"],
                          "values": {k: v for k, v in FW.items() if k in body.get("keys", [])}}
                todo += core.on_message(ATTR_RESPONSE, json.dumps(answer).encode(), now)
    return seen


def served(actions):
    return [a for a in actions if isinstance(a, ServePackage)]


def codes_of(actions):
    return [codes.dotted(a.code) for a in actions if isinstance(a, Reply)]


def first_block(core):
    seen = run(core, handled(core, fw_get(1, (0, 1024)), NOW))
    assert len(served(seen)) == 1, seen
    return seen


def test_1024_blocks_of_a_package_spend_no_device_request_budget_with_the_shipped_limits():
    core = make_core()
    first_block(core)
    for n in range(1, 1024):  # a 1 MiB package, all at one instant
        actions = handled(core, fw_get(1 + n, (n, 1024)), NOW)
        assert len(served(actions)) == 1, (n, actions)
    later = NOW + 1.0  # (the address's budget, 2000 at once and 1000/s, counts them all)
    chunks = [handled(core, fw_get(2000 + n, None, ("size=1024", "chunk=%d" % n)), later)
              for n in range(1024)]
    assert all(len(served(actions)) == 1 for actions in chunks)
    # the device's requests to the platform still have their budget
    uplinks = [handled(core, Request(5000 + n, codes.POST, ("api", "v1", "tok", "telemetry"),
                                       b'{"t": 1}', remote=PEER), later) for n in range(19)]
    assert all(codes_of(actions) == [] for actions in uplinks)  # stored, not refused


def test_download_budget_counts_bytes_of_the_block_size_asked_for():
    core = make_core(download_rate=1024.0, download_burst=4096.0)
    first_block(core)  # 1024 of 4096 bytes
    assert all(served(handled(core, fw_get(2 + n, (1 + n, 1024)), NOW)) for n in range(3))
    [refused] = handled(core, fw_get(9, (4, 1024)), NOW)
    assert codes_of([refused]) == ["4.29"] and refused.max_age == 1
    later = NOW + 1.0  # 1024 bytes again: four blocks of 256, or one size=256 piece and three
    assert all(served(handled(core, fw_get(10 + n, (16 + n, 256)), later)) for n in range(3))
    assert served(handled(core, fw_get(20, None, ("size=256", "chunk=7")), later))
    assert codes_of(handled(core, fw_get(21, (20, 256)), later)) == ["4.29"]


def test_a_download_that_must_ask_the_platform_spends_a_device_request():
    core = make_core(device_rate=1.0, device_burst=1.0)
    uplink = Request(1, codes.POST, ("api", "v1", "tok", "telemetry"), b'{"t": 1}', remote=PEER)
    assert codes_of(handled(core, uplink, NOW)) == []
    [refused] = handled(core, fw_get(2, (0, 1024)), NOW)  # the attributes are not known yet
    assert codes_of([refused]) == ["4.29"] and refused.max_age == 1
    first_block_later = run(core, handled(core, fw_get(3, (0, 1024)), NOW + 1), NOW + 1)
    assert len(served(first_block_later)) == 1
    # known now: the next blocks come from the cache, the device budget is not asked
    assert all(served(handled(core, fw_get(4 + n, (1 + n, 1024)), NOW + 1)) for n in range(50))


def test_on_a_reliable_connection_a_request_costs_what_one_answer_carries_there():
    # Request.room: 65,464 bytes in a message of 66,560 (BERT blocks of 64 KiB, or a whole
    # size/chunk piece); over UDP it is one 1024-byte block, as above
    room = 66560 - 72
    core = make_core(download_rate=1024.0, download_burst=4 * room)
    seen = run(core, handled(core, fw_get(1)._replace(room=room), NOW))  # block 0, no Block2
    assert len(served(seen)) == 1
    bert_blocks = [handled(core, fw_get(2 + n, (64 * (1 + n), room))._replace(room=room), NOW)
                   for n in range(2)]
    assert all(served(actions) for actions in bert_blocks)
    chunk = handled(core, fw_get(5, None, ("size=%d" % room, "chunk=3"))._replace(room=room), NOW)
    assert served(chunk)
    [refused] = handled(core, fw_get(6, None, ("size=100", "chunk=0"))._replace(room=room), NOW)
    assert codes_of([refused]) == ["4.29"]
