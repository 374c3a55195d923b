"""Power-saving modes through the real bridge, real mosquitto and libcoap's
coap-client-notls: a PSM device observes /attributes and /rpc and posts now and then, the
platform (PlatformSim) pushes meanwhile; what reaches the device, and when, is read from
the observers' output as it arrives.

The device profiles set the windows (the settings under test): 1.5 s instead of
ThingsBoard's 10 s, so that a cycle takes a few seconds; the done-when run with a 30 s cycle
and ThingsBoard's 10 s timer is ``test_done_when_*`` (marked ``long``: `make test` runs it
beside the rest of the suite, see tests/integration/conftest.py). In the done-when runs the
device's clients are behind a radio that is off while the device sleeps
(tests/udpradio.py): a downlink sent then would be lost, and retransmitted. Everything
else is the shipped defaults. Order, not speed, is asserted: a change pushed while the
device sleeps must not reach it before its next request, and must right after.
Over CoAPs and CoAP over TCP: test_power_transports.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
import urllib.request
from typing import Any, List, Sequence, Tuple

import pytest

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, free_port, wait_until
from platform_sim import PlatformSim
from test_protobuf import LIBCOAP
from udpradio import Radio

pytestmark = pytest.mark.integration
WINDOW_MS = 1500
OBSERVE = 6


OBSERVING = 900  # s: longer than any test here takes, however loaded the machine; stopped


class Observer:
    """coap-client-notls observing a resource (until ``stop``): each JSON document it prints
    (the first answer's and each notification's payload) as it comes."""

    def __init__(self, url: str, events: "Events", name: str, seconds: float = OBSERVING,
                 client: Sequence[str] = ()):
        """``client``: libcoap's client and its arguments (default: coap-client-notls)."""
        assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
        # -B: libcoap's client gives up an observation after that long without a
        # notification (90 s by default), which a sleeping device can easily go through
        self.proc = subprocess.Popen([*(client or [LIBCOAP]), "-m", "get",
                                      "-s", str(int(seconds)), "-B", str(int(seconds)), url],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.events, self.name = events, name
        self.docs: List[Any] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buffer += chunk.decode(errors="replace")
            while True:
                buffer = buffer.lstrip()
                try:
                    doc, end = decoder.raw_decode(buffer)
                except ValueError:
                    break
                buffer = buffer[end:]
                self.docs.append(doc)
                self.events.add(self.name, doc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Events:
    """What happened, in the order the test saw it: (what, data)."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, what: str, data: Any) -> None:
        with self.lock:
            self.items.append((what, data))

    def since(self, mark: int, what: str) -> List[Any]:
        with self.lock:
            return [data for kind, data in self.items[mark:] if kind == what]

    def mark(self) -> int:
        with self.lock:
            return len(self.items)


def post(bridge, token: str, body: dict, url: str = "", client: Sequence[str] = ()) -> None:
    """Telemetry from ``token``'s device: by coap-client-notls to the bridge's CoAP port,
    or by ``client`` to ``url``."""
    done = subprocess.run([*(client or [LIBCOAP]), "-m", "post", "-e", json.dumps(body),
                           url or "%s/api/v1/%s/telemetry" % (bridge.url, token)],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def metrics(port: int) -> dict:
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read()
    values = {}
    for line in text.decode().splitlines():
        if line.startswith("coapbridge_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def profile(mode: str, window_ms: int = WINDOW_MS) -> dict:
    key = "psmActivityTimer" if mode == "PSM" else "pagingTransmissionWindow"
    return {"clientSettings": {"powerMode": mode, key: window_ms}}


def environment(tmp_path_factory):
    """A broker, the platform, and a bridge with PSM, eDRX and DRX devices (a generator)."""
    broker = Mosquitto(str(tmp_path_factory.mktemp("psmbroker"))).start()
    platform = PlatformSim(broker.port)
    port = free_port()
    bridge = BridgeProcess(str(tmp_path_factory.mktemp("psmbridge")), broker.port,
                           metrics={"port": port},
                           # transportLog telemetry is a setting of its own (off by default)
                           coap={"transport_log": True},
                           # the storm test holds RPCs while 3000 pushes are read: under load
                           # that outlasted the default 60 s, the held RPCs expired, and the
                           # queue the test fills had room again (expiry: tests/core/test_power)
                           platform={"rpc_queue_ttl": 900},
                           device_profiles={"psm": profile("PSM"), "edrx": profile("E_DRX"),
                                            "drx": profile("DRX")})
    for n in range(1, 6):
        bridge.add_device("PSM %d" % n, "psm%d" % n, "psm")
    bridge.add_device("EDRX 1", "edrx1", "edrx")
    bridge.add_device("DRX 1", "drx1", "drx")
    bridge.start()
    yield platform, bridge, port
    bridge.stop()
    platform.close()
    broker.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from environment(tmp_path_factory)


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """A bridge of its own for the tests that count its retransmissions: no other test's
    observer (gone, its CON notifications still retransmitted) adds to the count."""
    yield from environment(tmp_path_factory)


def observe_both(bridge, platform, token, device, events, base="", client=()):
    """``device`` observes /attributes and /rpc (at ``base``: the bridge's CoAP URL unless
    given, with ``client``: coap-client-notls unless given)."""
    platform.set_attributes(device, {}, {"s": 0})
    base = base or bridge.url
    attributes = Observer("%s/api/v1/%s/attributes" % (base, token), events, "attributes",
                          client=client)
    rpc = Observer("%s/api/v1/%s/rpc" % (base, token), events, "rpc", client=client)
    wait_until(lambda: attributes.docs, 15, "the first answer to the observe")
    # the /rpc registration's connect, then a moment for its 2.03 (no payload to see)
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == device)
    time.sleep(0.3)
    return attributes, rpc


def transitions(platform, device, text="Info: Client is sleeping!"):
    """How often ``device`` fell asleep (or woke): its transportLog telemetry."""
    return sum(1 for payload in platform.received("v1/gateway/telemetry")
               for entry in payload.get(device, [])
               if entry["values"].get("transportLog") == text)


def asleep(platform, device, before):
    """Wait until ``device`` has fallen asleep more often than ``before`` times."""
    wait_until(lambda: transitions(platform, device) > before, 15,
               "%s to fall asleep" % device)


# == PSM ======================================================================

def test_psm_device_gets_the_merged_change_and_the_held_rpc_right_after_its_next_uplink(env):
    platform, bridge, port = env
    events = Events()
    attributes, rpc = observe_both(bridge, platform, "psm1", "PSM 1", events)
    try:
        for cycle in range(3):
            before = transitions(platform, "PSM 1")
            post(bridge, "psm1", {"seq": cycle})
            asleep(platform, "PSM 1", before)
            mark = events.mark()
            platform.push_attributes("PSM 1", {"a": cycle, "b": "x"})
            platform.push_attributes("PSM 1", {"a": cycle + 100})
            platform.push_attributes("PSM 1", {"deleted": ["s"]} if cycle == 0 else {"c": cycle})
            platform.send_rpc("PSM 1", 100 + cycle, "setValve", {"open": cycle})
            time.sleep(1.0)  # the device sleeps: nothing may reach it, however long
            assert events.since(mark, "attributes") == [] and events.since(mark, "rpc") == []
            post(bridge, "psm1", {"seq": 10 + cycle})
            wait_until(lambda: events.since(mark, "rpc"), 10, "the held RPC")
            wait_until(lambda: events.since(mark, "attributes"), 10, "the merged change")
            expected = {"a": cycle + 100, "b": "x"}
            expected.update({"deleted": ["s"]} if cycle == 0 else {"c": cycle})
            assert events.since(mark, "attributes") == [expected]  # one notification
            assert events.since(mark, "rpc") == [{"id": 100 + cycle, "method": "setValve",
                                                  "params": {"open": cycle}}]
    finally:
        attributes.stop()
        rpc.stop()
    values = metrics(port)
    assert values["coapbridge_power_awake_total"] >= 3
    logs = [e["values"]["transportLog"] for p in platform.received("v1/gateway/telemetry")
            for e in p.get("PSM 1", []) if "transportLog" in e["values"]]
    assert logs[:2] == ["Info: Client is sleeping!", "Info: Client is awake!"]


def test_a_sleeping_psm_devices_relations_survive_a_push_storm_with_flat_memory(env):
    platform, bridge, port = env
    events = Events()
    attributes, rpc = observe_both(bridge, platform, "psm2", "PSM 2", events)
    try:
        before = transitions(platform, "PSM 2")
        post(bridge, "psm2", {"seq": 1})
        asleep(platform, "PSM 2", before)
        mark = events.mark()
        value = "v" * 2000  # queued one by one, the pushes would hold 2 kB each

        def storm(count, base):
            for n in range(count):
                platform.push_attributes("PSM 2", {"k%d" % (n % 4): "%s%d" % (value, base + n)})
            for n in range(150):  # past platform.rpc_queue_size (100); the last read last
                platform.send_rpc("PSM 2", base + n, "tick", {})
        dropped = metrics(port)["coapbridge_rpc_dropped_total"]

        def taken(count):  # every RPC of the storm read: the last ones were dropped
            wait_until(lambda: metrics(port)["coapbridge_rpc_dropped_total"] >= dropped + count,
                       60, "the storm to be read")
            time.sleep(0.5)
        storm(1000, 0)
        taken(50)
        first = rss_kib(bridge.proc.pid)
        storm(2000, 100000)
        taken(200)
        grown = rss_kib(bridge.proc.pid) - first
        values = metrics(port)
        assert values["coapbridge_observers"] >= 2  # its relations stay
        assert grown < 2048, "memory grew %d KiB over 2000 pushes to a sleeping device" % grown
        assert events.since(mark, "attributes") == [] and events.since(mark, "rpc") == []
        post(bridge, "psm2", {"seq": 2})
        wait_until(lambda: events.since(mark, "attributes"), 10, "the merged change")
        assert events.since(mark, "attributes") == [
            {"k%d" % k: "%s%d" % (value, 100000 + 1996 + k) for k in range(4)}]
        # the RPCs held: the first rpc_queue_size, in order, one CON at a time
        wait_until(lambda: len(events.since(mark, "rpc")) >= 100, 30, "the held RPCs")
        assert [r["id"] for r in events.since(mark, "rpc")] == list(range(100))
    finally:
        attributes.stop()
        rpc.stop()


def test_a_psm_device_that_sleeps_with_a_notification_unacknowledged_gets_no_retransmission(
        lone):
    """A device that truly sleeps (the test's raw client: it answers nothing while asleep):
    the notification sent just before the window ends is withdrawn, not retransmitted, and
    reaches the device after its next request."""
    platform, bridge, port = lone
    platform.set_attributes("PSM 3", {}, {"s": 0})
    client = raw.Client(bridge.host, bridge.coap_port, timeout=10)
    try:
        first = client.exchange(raw.request(raw.GET, "/api/v1/psm3/attributes", mid=1,
                                            token=b"\xa3", extra=[(OBSERVE, b"")]))
        assert first.code_str == "2.05"
        values = metrics(port)
        answer = client.exchange(raw.request(raw.POST, "/api/v1/psm3/telemetry", b'{"t": 0}',
                                             mid=2))
        assert answer.code_str == "2.01"  # its window starts again
        platform.push_attributes("PSM 3", {"a": 1})  # within the window: sent at once
        sent = client.recv(timeout=10)
        assert json.loads(sent.payload) == {"a": 1} and sent.mtype == raw.CON
        # not acknowledged: the device fell asleep
        wait_until(lambda: metrics(port)["coapbridge_notifications_withdrawn_total"] >
                   values["coapbridge_notifications_withdrawn_total"], 15, "the withdrawal")
        time.sleep(3.5)  # past the first retransmission's time (2 to 3 s)
        after = metrics(port)
        assert after["coapbridge_coap_retransmissions_total"] == \
            values["coapbridge_coap_retransmissions_total"]
        assert client.recv(timeout=0.2) is None  # nothing more came
        client.send(raw.request(raw.POST, "/api/v1/psm3/telemetry", b'{"t": 1}', mid=3))
        got = [client.recv(timeout=10), client.recv(timeout=10)]
        again = next(m for m in got if m.mtype == raw.CON)
        assert json.loads(again.payload) == {"a": 1}
        client.send(raw.Msg(raw.ACK, 0, again.mid))
    finally:
        client.close()


# == eDRX and DRX =============================================================

def test_an_edrx_device_gets_one_downlink_after_its_window_then_the_rest_at_its_next_uplink(
        env):
    """The test's raw client as an eDRX device that hears nothing between its paging
    occasions: after the window one notification goes (and is retransmitted: the device may
    catch it at its next occasion); the next changes wait, merged, for its next uplink."""
    platform, bridge, port = env
    platform.set_attributes("EDRX 1", {}, {})
    client = raw.Client(bridge.host, bridge.coap_port, timeout=10)
    try:
        first = client.exchange(raw.request(raw.GET, "/api/v1/edrx1/attributes", mid=1,
                                            token=b"\xe1", extra=[(OBSERVE, b"")]))
        assert first.code_str == "2.05"
        before = transitions(platform, "EDRX 1")
        assert client.exchange(raw.request(raw.POST, "/api/v1/edrx1/telemetry", b'{"t": 0}',
                                           mid=2)).code_str == "2.01"
        asleep(platform, "EDRX 1", before)
        platform.push_attributes("EDRX 1", {"x": 1})
        one = client.recv(timeout=10)
        assert json.loads(one.payload) == {"x": 1} and one.mtype == raw.CON
        platform.push_attributes("EDRX 1", {"x": 2})
        platform.push_attributes("EDRX 1", {"y": 3})
        deadline = time.monotonic() + 4.0  # past its first retransmission
        heard = []
        while time.monotonic() < deadline:
            message = client.recv(timeout=max(0.05, deadline - time.monotonic()))
            if message is not None:
                heard.append(message)
        assert heard and all(m.mid == one.mid for m in heard)  # only {"x": 1}, again
        client.send(raw.request(raw.POST, "/api/v1/edrx1/telemetry", b'{"t": 1}', mid=3))
        client.send(raw.Msg(raw.ACK, 0, one.mid))  # it caught it now
        merged = None
        while merged is None:
            message = client.recv(timeout=10)
            assert message is not None, "the held change never came"
            if message.mtype == raw.CON and message.mid != one.mid:
                merged = message
        assert json.loads(merged.payload) == {"x": 2, "y": 3}
        client.send(raw.Msg(raw.ACK, 0, merged.mid))
    finally:
        client.close()


def test_a_drx_device_is_unchanged(env):
    platform, bridge, port = env
    events = Events()
    platform.set_attributes("DRX 1", {}, {})
    attributes = Observer(bridge.url + "/api/v1/drx1/attributes", events, "attributes")
    try:
        wait_until(lambda: attributes.docs, 15, "the first answer")
        time.sleep(2 * WINDOW_MS / 1000.0)
        for n in range(3):
            platform.push_attributes("DRX 1", {"n": n})
        wait_until(lambda: len(events.since(0, "attributes")) == 4, 10, "three notifications")
        assert events.since(0, "attributes")[1:] == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        attributes.stop()


# == the done-when run, scaled down and in full ==============================

def cycles(bridge, platform, port, token, device, cycle, count, rng, window):
    """A PSM device observed for ``count`` cycles of ``cycle`` s, behind a radio that is
    off ``window`` s (and a slack) after the device last sent (tests/udpradio.py): it posts
    at the start of each cycle; the platform pushes a change and an RPC at random moments.
    Returns what was pushed, what arrived, what the radio dropped (a downlink while the
    device slept), and the bridge's counters' changes meanwhile."""
    events = Events()
    radio = Radio((bridge.host, bridge.coap_port), window)
    base = "coap://127.0.0.1:%d" % radio.port
    attributes, rpc = observe_both(bridge, platform, token, device, events, base)
    before = metrics(port)
    pushed, rpcs = [], []
    uplink = "%s/api/v1/%s/telemetry" % (base, token)
    try:
        start = time.monotonic()
        for k in range(count):
            post(bridge, token, {"seq": k}, uplink)
            for moment in sorted(rng.uniform(0, cycle * 0.9) for _ in range(3)):
                time.sleep(max(0.0, start + k * cycle + moment - time.monotonic()))
                n = len(pushed)
                pushed.append(n)
                platform.push_attributes(device, {"n%d" % n: n})
                if n % 3 == 0:
                    rpcs.append(n)
                    platform.send_rpc(device, n, "step", {"n": n})
            time.sleep(max(0.0, start + (k + 1) * cycle - time.monotonic()))
        post(bridge, token, {"seq": count}, uplink)  # the last cycle's changes go at this one
        try:
            wait_until(lambda: len(events.since(0, "rpc")) >= len(rpcs), 20, "every RPC")
            wait_until(lambda: set(pushed) <= {value for doc in events.since(0, "attributes")
                                               for key, value in doc.items() if key != "s"},
                       20, "every change")
        except AssertionError:
            pass  # what is missing shows in the comparisons the test makes
        time.sleep(1)  # anything sent twice would show now
    finally:
        attributes.stop()
        rpc.stop()
        radio.close()
    after = metrics(port)
    docs = events.since(0, "attributes")[1:]
    seen = [value for doc in docs for value in doc.values()]
    delta = {name: after[name] - before[name] for name in after if name in before}
    delta["merged notifications"] = sum(1 for doc in docs if len(doc) > 1)
    return pushed, rpcs, seen, [r["id"] for r in events.since(0, "rpc")], radio.dropped, delta


def check_cycles(pushed, rpcs, seen, got, dropped, delta):
    assert sorted(seen) == pushed  # every change, exactly once
    assert got == rpcs  # every RPC, exactly once, in order
    # nothing reached the device while its radio was off, so nothing was retransmitted
    assert dropped == [], ["%.1f s after its last datagram" % since for since, _ in dropped]
    assert delta["coapbridge_coap_retransmissions_total"] == 0
    # it slept in most cycles (an ACK in its window keeps it awake longer) and changes
    # pushed meanwhile came merged
    assert delta["coapbridge_power_asleep_total"] >= 5 and delta["merged notifications"] >= 1


def test_scaled_done_when_every_change_and_rpc_exactly_once_no_retransmission(lone):
    """#24's done-when run scaled down: a 4 s cycle and a 1.5 s timer, 10 cycles."""
    platform, bridge, port = lone
    check_cycles(*cycles(bridge, platform, port, "psm4", "PSM 4", 4.0, 10, random.Random(24),
                         WINDOW_MS / 1000.0))


@pytest.mark.long
def test_done_when_a_psm_device_with_a_30_s_cycle_for_10_cycles(tmp_path_factory):
    """#24's done-when run as stated: ThingsBoard's default 10 s activity timer (the
    profile gives none: coap.psm_activity_timer), a 30 s cycle, 10 cycles (5 minutes). It
    runs in `make test` beside the rest of the suite (scripts/test.sh), and alone in `make
    test-long`."""
    broker = Mosquitto(str(tmp_path_factory.mktemp("longbroker"))).start()
    platform = PlatformSim(broker.port)
    port = free_port()
    bridge = BridgeProcess(str(tmp_path_factory.mktemp("longbridge")), broker.port,
                           metrics={"port": port},
                           device_profiles={"psm": {"clientSettings": {"powerMode": "PSM"}}})
    bridge.add_device("PSM Long", "psmlong", "psm")
    bridge.start()
    try:
        outcome = cycles(bridge, platform, port, "psmlong", "PSM Long", 30.0, 10,
                         random.Random(30), 10.0)
    finally:
        bridge.stop()
        platform.close()
        broker.stop()
    check_cycles(*outcome)
