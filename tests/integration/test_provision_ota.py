"""Provisioning and firmware downloads through the real bridge, with a simulated platform."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import threading
import time
import zlib

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import coapraw as raw
from conftest import BridgeProcess, Mosquitto
from platform_sim import PlatformSim
from test_clients import AIOCOAP, libcoap

pytestmark = pytest.mark.integration
ETAG = 4
PACKAGE = random.Random(7).randbytes(1024 * 1024)  # 1 MiB firmware


class ProvisioningPlatform:
    """Answers /provision/request like ThingsBoard (create-new strategy)."""

    def __init__(self, port: int, key: str = "pkey", secret: str = "psecret",
                 silent: bool = False):
        self.key, self.secret = key, secret
        self.silent = silent  # a platform too slow to answer within the bridge's timeout
        self.devices = {}
        self.requests = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="prov-platform")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("/provision/request", qos=1)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client, userdata, message):
        request = json.loads(message.payload)
        self.requests.append(request)
        if self.silent:
            return
        if request.get("provisionDeviceKey") != self.key \
                or request.get("provisionDeviceSecret") != self.secret:
            answer = {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
        elif request["deviceName"] in self.devices:
            answer = {"errorMsg": "Failed to provision device!", "status": "FAILURE"}
        else:
            token = request.get("token") or "tok-" + request["deviceName"].replace(" ", "_")
            self.devices[request["deviceName"]] = token
            answer = {"credentialsValue": token, "credentialsType": "ACCESS_TOKEN",
                      "status": "SUCCESS"}
        self.client.publish("/provision/response", json.dumps(answer), qos=1)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class OtaPlatform:
    """Serves v2/fw/request/{id}/chunk/{n} like ThingsBoard, from one package."""

    def __init__(self, port: int, package: bytes, delay: float = 0.0):
        self.package = package
        self.delay = delay  # seconds before each chunk's answer (a slow platform)
        self.first_chunks = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ota-platform")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("v2/fw/request/+/chunk/+", qos=1)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client, userdata, message):
        parts = message.topic.split("/")
        request_id, chunk = parts[3], int(parts[5])
        size = int(message.payload or b"0") or len(self.package)
        if chunk == 0:
            self.first_chunks += 1
        data = self.package[chunk * size:(chunk + 1) * size]
        time.sleep(self.delay)
        self.client.publish("v2/fw/response/%s/chunk/%d" % (request_id, chunk), data, qos=1)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def post(bridge, path, body, mid, timeout=5.0):
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        return client.exchange(raw.request(raw.POST, path, json.dumps(body).encode(), mid=mid),
                               timeout)
    finally:
        client.close()


# -- provisioning -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("prov"))
    broker = Mosquitto(workdir).start()
    platform = ProvisioningPlatform(broker.port)
    bridge = BridgeProcess(workdir, broker.port).start()
    yield broker, platform, bridge
    bridge.stop()
    platform.close()
    broker.kill()


def test_upstream_provisioning_then_the_device_posts_at_once(upstream):
    broker, platform, bridge = upstream
    reply = post(bridge, "/api/v1/provision", {"deviceName": "Fresh 1", "provisionDeviceKey": "pkey",
                                               "provisionDeviceSecret": "psecret"}, 1)
    assert reply.code_str == "2.01"
    body = json.loads(reply.payload)
    assert body["status"] == "SUCCESS" and body["credentialsType"] == "ACCESS_TOKEN"
    token = body["credentialsValue"]
    assert post(bridge, "/api/v1/%s/telemetry" % token, {"hello": 1}, 2).code_str == "2.01"


@pytest.mark.parametrize("name", ["Evil\x1b[2J\x1b[1;1Hroot", "two\nlines", "x" * 256])
def test_a_device_name_with_control_characters_or_too_long_gets_4_00(upstream, name):
    # before: the name went to the platform and into the registry and the log as it was
    broker, platform, bridge = upstream
    asked = len(platform.requests)
    reply = post(bridge, "/api/v1/provision", {"deviceName": name, "provisionDeviceKey": "pkey",
                                               "provisionDeviceSecret": "psecret"}, 4)
    assert reply.code_str == "4.00"
    assert b"deviceName" in reply.payload
    assert len(platform.requests) == asked  # never relayed
    assert all(entry.name != name for entry in bridge.registry.entries())
    assert "\x1b" not in bridge.read_log() and "two\nlines" not in bridge.read_log()


def test_upstream_provisioning_wrong_secret_gets_4_00_with_the_platforms_answer(upstream):
    broker, platform, bridge = upstream
    reply = post(bridge, "/api/v1/provision", {"deviceName": "Fresh 2", "provisionDeviceKey": "pkey",
                                               "provisionDeviceSecret": "wrong"}, 3)
    assert reply.code_str == "4.00"
    assert json.loads(reply.payload) == {"errorMsg": "Provision data was not found!",
                                         "status": "NOT_FOUND"}


def test_concurrent_provisioning_of_one_name_yields_one_device(upstream):
    broker, platform, bridge = upstream
    body = {"deviceName": "Twin", "provisionDeviceKey": "pkey", "provisionDeviceSecret": "psecret"}
    results = []

    def go(mid):
        results.append(post(bridge, "/api/v1/provision", body, mid))
    threads = [threading.Thread(target=go, args=(100 + n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    codes = sorted(r.code_str for r in results)
    assert codes == ["2.01", "4.00", "4.00", "4.00"]
    assert list(platform.devices).count("Twin") == 1
    assert [e.name for e in bridge.registry.entries()].count("Twin") == 1


def test_simultaneous_provisioning_of_different_names_waits_one_timeout_not_one_each(tmp_path):
    broker = Mosquitto(str(tmp_path)).start()
    platform = ProvisioningPlatform(broker.port, silent=True)
    timeout = 2  # provisioning.timeout: the test is about it (the default is 10 s)
    bridge = BridgeProcess(str(tmp_path), broker.port, provisioning={"timeout": timeout})
    bridge.start()
    answers = []  # (code, how many requests had reached the platform when it came)
    lock = threading.Lock()

    def go(n):
        body = {"deviceName": "Slow %d" % n, "provisionDeviceKey": "pkey",
                "provisionDeviceSecret": "psecret"}
        # long enough for one timeout per request, as when they were handled one at a time
        reply = post(bridge, "/api/v1/provision", body, 200 + n, timeout=6 * timeout + 5)
        with lock:
            answers.append((reply.code_str, len(platform.requests)))
    try:
        threads = [threading.Thread(target=go, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(6 * timeout + 10)
        assert sorted(code for code, _ in answers) == ["5.04"] * 6
        # every request was with the platform before the first timeout ended any of them
        # (one at a time, the platform saw 1, 2, ..., 6 as the answers came)
        assert [seen for _, seen in answers] == [6] * 6
        assert sorted(r["deviceName"] for r in platform.requests) == ["Slow %d" % n
                                                                      for n in range(6)]
    finally:
        bridge.stop()
        platform.close()
        broker.kill()


def test_provisioning_from_one_address_past_its_burst_gets_4_29_with_max_age(tmp_path):
    from bridge.settings import Config
    burst = int(Config().provisioning.peer_burst)  # the shipped default (conf test checks it)
    broker = Mosquitto(str(tmp_path)).start()
    bridge = BridgeProcess(str(tmp_path), broker.port, provisioning={
        "mode": "local", "profiles": [{"key": "k", "secret": "s", "device_type": "meter"}]})
    bridge.start()
    try:
        answered = []
        for n in range(burst + 5):  # the bucket refills meanwhile: a few more than the burst
            reply = post(bridge, "/api/v1/provision", {"provisionDeviceKey": "k",
                                                       "provisionDeviceSecret": "wrong"}, 300 + n)
            answered.append(reply.code_str)
            if reply.code_str == "4.29":
                break
        assert answered[-1] == "4.29", answered
        assert reply.uint(raw.MAX_AGE) >= 1
        assert len(answered) > burst and set(answered[:-1]) == {"4.00"}  # NOT_FOUND until then
        # another address is not limited by this one's bucket
        other = raw.Client(bridge.host, bridge.coap_port)
        other.sock.bind(("127.0.0.2", 0))
        try:
            reply = other.exchange(raw.request(raw.POST, "/api/v1/provision", json.dumps(
                {"provisionDeviceKey": "k", "provisionDeviceSecret": "wrong"}).encode(), mid=400))
        finally:
            other.close()
        assert reply.code_str == "4.00"
    finally:
        bridge.stop()
        broker.kill()


def test_platform_silence_gets_5_04(tmp_path):
    broker = Mosquitto(str(tmp_path)).start()  # no provisioning platform listening
    bridge = BridgeProcess(str(tmp_path), broker.port, provisioning={"timeout": 1})
    bridge.start()
    try:
        reply = post(bridge, "/api/v1/provision", {"provisionDeviceKey": "k",
                                                   "provisionDeviceSecret": "s"}, 5)
        assert reply.code_str == "5.04"
    finally:
        bridge.stop()
        broker.kill()


def test_local_provisioning_strategies(tmp_path):
    broker = Mosquitto(str(tmp_path)).start()
    bridge = BridgeProcess(str(tmp_path), broker.port, provisioning={
        "mode": "local",
        "profiles": [{"key": "new-key", "secret": "new-secret", "device_type": "meter",
                      "strategy": "create_new"},
                     {"key": "pre-key", "secret": "pre-secret", "device_type": "valve",
                      "strategy": "pre_provisioned"}]})
    bridge.registry.add("Valve 1", "placeholder-token", "valve", pending=True)
    bridge.start()
    try:
        new = {"deviceName": "Meter 1", "provisionDeviceKey": "new-key",
               "provisionDeviceSecret": "new-secret", "token": "meter1token"}
        first = post(bridge, "/api/v1/provision", new, 10)
        assert first.code_str == "2.01"
        assert json.loads(first.payload) == {"credentialsValue": "meter1token",
                                             "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}
        again = post(bridge, "/api/v1/provision", new, 11)
        assert again.code_str == "4.00" and json.loads(again.payload)["status"] == "FAILURE"
        assert post(bridge, "/api/v1/meter1token/telemetry", {"v": 1}, 12).code_str == "2.01"
        wrong = dict(new, provisionDeviceSecret="nope", deviceName="Meter 2")
        assert json.loads(post(bridge, "/api/v1/provision", wrong, 13).payload)["status"] == "NOT_FOUND"
        pre = {"deviceName": "Valve 1", "provisionDeviceKey": "pre-key",
               "provisionDeviceSecret": "pre-secret"}
        assert post(bridge, "/api/v1/placeholder-token/telemetry", {"v": 1}, 14).code_str == "4.01"
        valve = post(bridge, "/api/v1/provision", pre, 15)
        assert valve.code_str == "2.01"
        token = json.loads(valve.payload)["credentialsValue"]
        assert post(bridge, "/api/v1/%s/telemetry" % token, {"v": 2}, 16).code_str == "2.01"
        unknown = dict(pre, deviceName="Valve 9")
        assert post(bridge, "/api/v1/provision", unknown, 17).code_str == "4.00"
    finally:
        bridge.stop()
        broker.kill()


# -- firmware --------------------------------------------------------------------------------

def fw_attributes(package: bytes, algorithm: str = "SHA256", checksum: str = None):
    if checksum is None:
        checksum = (hashlib.sha256(package).hexdigest() if algorithm == "SHA256"
                    else "%08x" % (zlib.crc32(package) & 0xFFFFFFFF))
    return {"fw_title": "blinker", "fw_version": "2.0", "fw_size": len(package),
            "fw_checksum": checksum, "fw_checksum_algorithm": algorithm}


@pytest.fixture
def ota_env(tmp_path):
    made = []

    def make(package_served, attributes, ota_delay=0.0, **overrides):
        broker = Mosquitto(str(tmp_path)).start()
        platform = PlatformSim(broker.port)
        ota = OtaPlatform(broker.port, package_served, ota_delay)
        bridge = BridgeProcess(str(tmp_path), broker.port, **overrides)
        for n in range(20):
            bridge.add_device("Fw %d" % n, "fw%d" % n)
            platform.set_attributes("Fw %d" % n, {}, attributes)
        bridge.start()
        made.append((broker, platform, ota, bridge))
        return platform, ota, bridge
    yield make
    for broker, platform, ota, bridge in made:
        bridge.stop()
        ota.close()
        platform.close()
        broker.kill()


def test_one_mib_package_by_libcoap_block2_and_by_size_chunk_is_byte_identical(ota_env, tmp_path):
    platform, ota, bridge = ota_env(PACKAGE, fw_attributes(PACKAGE))
    out = tmp_path / "fw.bin"
    code, log = libcoap("-b", "1024", "-o", str(out),
                        bridge.url + "/fw/fw0?title=blinker&version=2.0")
    assert out.read_bytes() == PACKAGE, log[-300:]
    client = raw.Client(bridge.host, bridge.coap_port)
    pieces, chunk = [], 0
    while True:
        reply = client.exchange(raw.request(
            raw.GET, "/api/v1/fw1/firmware", mid=3000 + chunk,
            extra=[(raw.URI_QUERY, b"title=blinker"), (raw.URI_QUERY, b"version=2.0"),
                   (raw.URI_QUERY, b"size=1024"), (raw.URI_QUERY, b"chunk=%d" % chunk)]))
        assert reply.code_str == "2.05"
        if not reply.payload:
            break  # past the end: 2.05 with an empty payload
        pieces.append(reply.payload)
        chunk += 1
    assert b"".join(pieces) == PACKAGE and chunk == 1024
    blocks = [client.exchange(raw.request(
        raw.GET, "/fw/fw0", mid=5900 + n,
        extra=[(raw.URI_QUERY, b"title=blinker"), (raw.URI_QUERY, b"version=2.0"),
               (raw.BLOCK2, bytes([(n << 4) | 6]))])) for n in (0, 5)]
    assert blocks[1].payload == PACKAGE[5 * 1024:6 * 1024]
    assert blocks[0].option(ETAG) and blocks[0].option(ETAG) == blocks[1].option(ETAG)
    assert ota.first_chunks == 1  # fetched from the platform once


def test_libcoap_block2_download_whose_first_block_waits_for_a_slow_fetch(ota_env, tmp_path):
    # the first block waits for the package (64 chunks, 0.03 s each: past coap.empty_ack_delay);
    # libcoap 4.3.1 loses a first block sent as a separate response and hangs: it must come
    # in the ACK
    platform, ota, bridge = ota_env(PACKAGE, fw_attributes(PACKAGE), ota_delay=0.03)
    out = tmp_path / "slow.bin"
    code, log = libcoap("-b", "1024", "-o", str(out), bridge.url + "/fw/fw6")
    assert out.read_bytes() == PACKAGE, log[-300:]
    assert "t:ACK c:0.00" not in log  # no empty ACK: the answer came piggybacked


def test_aiocoap_client_downloads_the_package_by_block2_with_the_shipped_limits(ota_env):
    platform, ota, bridge = ota_env(PACKAGE, fw_attributes(PACKAGE))
    done = subprocess.run([AIOCOAP, bridge.url + "/fw/fw7"], capture_output=True, timeout=60)
    assert done.stdout == PACKAGE, done.stderr[-300:]


def test_twenty_devices_at_once_cause_one_upstream_fetch(ota_env):
    platform, ota, bridge = ota_env(PACKAGE, fw_attributes(PACKAGE))
    results = {}

    def fetch(n):
        client = raw.Client(bridge.host, bridge.coap_port, timeout=30)
        reply = client.exchange(raw.request(
            raw.GET, "/fw/fw%d" % n, mid=4000 + n,
            extra=[(raw.URI_QUERY, b"size=1024"), (raw.URI_QUERY, b"chunk=1000")]), timeout=30)
        results[n] = (reply.code_str, reply.payload)
    threads = [threading.Thread(target=fetch, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 20
    assert all(r == ("2.05", PACKAGE[1024000:1025024]) for r in results.values())
    assert ota.first_chunks == 1


def test_corrupted_upstream_package_is_refused(ota_env):
    corrupted = bytearray(PACKAGE)
    corrupted[12345] ^= 0xFF
    platform, ota, bridge = ota_env(bytes(corrupted), fw_attributes(PACKAGE))
    client = raw.Client(bridge.host, bridge.coap_port, timeout=30)
    reply = client.exchange(raw.request(raw.GET, "/fw/fw2", mid=5000,
                                        extra=[(raw.URI_QUERY, b"size=512"),
                                               (raw.URI_QUERY, b"chunk=0")]), timeout=30)
    assert reply.code_str == "4.04"
    assert "checksum mismatch" in bridge.read_log()


def test_wrong_version_missing_package_and_bad_query(ota_env):
    platform, ota, bridge = ota_env(PACKAGE, fw_attributes(PACKAGE))
    platform.set_attributes("Fw 3", {}, {})
    client = raw.Client(bridge.host, bridge.coap_port, timeout=15)
    ask = lambda path, *query, mid: client.exchange(raw.request(
        raw.GET, path, mid=mid, extra=[(raw.URI_QUERY, q.encode()) for q in query])).code_str
    assert ask("/fw/fw4", "title=blinker", "version=1.0", mid=1) == "4.00"
    assert ask("/fw/fw4", "size=abc", mid=2) == "4.00"
    assert ask("/fw/fw3", mid=3) == "4.04"
    assert ask("/fw/nosuchtoken", mid=4) == "4.01"


def test_directory_source_with_crc32(ota_env, tmp_path):
    directory = tmp_path / "packages" / "blinker"
    directory.mkdir(parents=True)
    (directory / "2.0").write_bytes(PACKAGE)
    platform, ota, bridge = ota_env(b"", fw_attributes(PACKAGE, "CRC32"),
                                    ota={"source": "directory",
                                         "directory": str(tmp_path / "packages")})
    out = tmp_path / "dir.bin"
    code, log = libcoap("-b", "512", "-o", str(out), bridge.url + "/fw/fw5")
    assert out.read_bytes() == PACKAGE, log[-300:]
    assert ota.first_chunks == 0
