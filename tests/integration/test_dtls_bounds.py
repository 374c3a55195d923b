"""CoAPs defects found by a hostile or careless user (#27.1, #27.2, #27.12), each against
``twistd -n coapbridge`` with real clients: libcoap's ``coap-client-openssl``, and our
OpenSSL client (tests/dtlsclient.py) where libcoap cannot do what the test needs."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.request
from typing import List

import pytest
from OpenSSL import SSL

import coapraw as raw
from conftest import Mosquitto, free_ports, wait_until
from dtlsclient import DtlsClient, client_context
from platform_sim import PlatformSim
from test_dtls import OPENSSL, Pki, client, coaps, first_answer, start_dtls_bridge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A bridge on the shipped DTLS defaults."""
    workdir = str(tmp_path_factory.mktemp("dtls-bounds"))
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    pki = Pki(workdir)
    bridge = start_dtls_bridge(workdir, broker, pki, [],
                               psk_devices=[("Big", "bigtok", None, b"big-secret"),
                                            ("Newcomer", "newtok", None, b"new-secret")],
                               metrics_port=free_ports())
    yield broker, platform, bridge, pki
    bridge.stop()
    platform.close()
    broker.stop()


def telemetry(platform, name) -> List[dict]:
    return [entry["values"] for payload in platform.received("v1/gateway/telemetry")
            for entry in payload.get(name, [])]


def test_a_5000_byte_request_in_one_record_is_one_request(env, tmp_path):
    # #27.1: the record was read in 4096-byte pieces, each handed to CoAP as a message:
    # this POST got 4.00 (invalid JSON), and a request hidden after byte 4096 was answered
    broker, platform, bridge, pki = env
    peer = DtlsClient("127.0.0.1", bridge.dtls_port,
                      client_context(psk=("bigtok", b"big-secret"))).handshake()
    head = len(raw.encode(raw.request(raw.POST, "/api/v1/telemetry", b"", mid=1)))
    big = "x" * (5000 - head - 1 - len('{"big": ""}'))
    body = json.dumps({"big": big}).encode()
    message = raw.request(raw.POST, "/api/v1/telemetry", body, mid=1)
    assert len(raw.encode(message)) == 5000
    reply = peer.exchange(message)
    assert (reply.mid, reply.code_str) == (1, "2.01")
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get("big") == big for e in p.get("Big", [])))
    # a forged request (another token and message ID) from byte 4096 on
    forged = raw.encode(raw.request(raw.POST, "/api/v1/bigtok/telemetry", b'{"forged": 1}',
                                    mid=0x6666, token=b"\x66"))
    carrier = raw.request(raw.POST, "/api/v1/telemetry", b"", mid=2)
    filler = 4096 - len(raw.encode(carrier)) - 1
    carrier.payload = b"P" * filler + forged + b"Q" * (5000 - 4096 - len(forged))
    assert raw.encode(carrier)[4096:].startswith(forged)
    reply = peer.exchange(carrier)
    assert (reply.mid, reply.code_str) == (2, "4.00")  # one request, not JSON
    reply = peer.exchange(raw.request(raw.POST, "/api/v1/telemetry", b'{"after": 1}', mid=3))
    assert (reply.mid, reply.code_str) == (3, "2.01")  # not the forged one's answer
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get("after") == 1 for e in p.get("Big", [])))
    assert not any("forged" in values for values in telemetry(platform, "Big"))
    peer.close()
    # libcoap's client sends the same 5,000 bytes by Block1 (it sends nothing larger than
    # its DTLS MTU, 1,152 bytes, in one message): whole as well
    payload = tmp_path / "body.json"
    payload.write_bytes(json.dumps({"blockwise": big}).encode())
    code, out = client("openssl", "-m", "post", "-f", str(payload), "-u", "bigtok",
                       "-k", "big-secret", coaps(bridge, "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    platform.wait_for("v1/gateway/telemetry", lambda p: any(
        e["values"].get("blockwise") == big for e in p.get("Big", [])))


def verified_hello(host: str, port: int, context) -> socket.socket:
    """One ClientHello with a valid cookie from ``host`` (a new source port), then
    silence: a half-open handshake, if the bridge lets it start. The socket is returned
    open, for the caller to close once the address's hellos are sent: closed at once, its
    port could be the next socket's, and that socket's first datagram would then be the
    bridge's (re)sent ServerHello flight of an earlier handshake from the address, not its
    HelloVerifyRequest (the client, handed a ServerHello, had nothing to send:
    WantReadError, under load when the bridge's retransmissions and the test overlap)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5.0)
    conn = SSL.Connection(context, None)
    conn.set_connect_state()
    conn.set_ciphertext_mtu(1200)  # a memory BIO has no MTU to query
    try:
        for _ in range(2):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            sock.sendto(conn.bio_read(65536), ("127.0.0.1", port))
            if _ == 0:
                conn.bio_write(sock.recv(70000))  # the HelloVerifyRequest
    except BaseException:
        sock.close()
        raise
    return sock


def test_a_flood_of_half_open_handshakes_from_32_addresses_leaves_room_for_a_device(env):
    # #27.12: one address held 268 half-open handshakes in 25 s, so about 32 addresses
    # filled dtls.max_sessions. Now each address holds at most
    # dtls.max_handshakes_per_address (20) and they are counted apart from the sessions
    broker, platform, bridge, pki = env
    context, _keep = client_context(psk=("flood", b"no such key"))
    for host in range(1, 33):
        held: list = []  # this address's sockets, open until its 25 hellos are sent
        try:
            for _ in range(25):
                held.append(verified_hello("127.1.0.%d" % host, bridge.dtls_port, context))
        finally:
            for sock in held:
                sock.close()
    # the bridge's own count: 20 of each address's 25 began, the rest were refused (none
    # reached the rate limit: its burst is 20 too, and the bound is checked first)
    wait_until(lambda: metric(bridge, "coapbridge_dtls_refused_address_total") == 32 * 5,
               10, "the refusals counted")
    assert metric(bridge, "coapbridge_dtls_refused_rate_total") == 0
    assert metric(bridge, "coapbridge_dtls_hello_verify_sent_total") >= 32 * 25
    assert "(dtls.max_handshakes_per_address; " in bridge.read_log()
    code, out = client("openssl", "-m", "post", "-e", '{"got_in": 1}', "-u", "newtok",
                       "-k", "new-secret", coaps(bridge, "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    platform.wait_for("v1/gateway/telemetry", lambda p: any(
        e["values"].get("got_in") == 1 for e in p.get("Newcomer", [])))


def metric(bridge, name: str) -> float:
    """A sample of the bridge's metrics port."""
    url = "http://127.0.0.1:%d/metrics" % bridge.metrics_port
    with urllib.request.urlopen(url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError("no %s on the metrics port" % name)


class Lines:
    """An observing client's output (-v 6), read in a thread as it comes."""

    def __init__(self, proc):
        self.proc = proc
        self.text = first_answer(proc)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            self.text += line.decode(errors="replace")


def test_a_device_that_only_observes_keeps_its_session_past_the_idle_timeout(tmp_path):
    # #27.2, a test about dtls.idle_timeout (COAP_DTLS_IDLE_TIMEOUT): small here. Only
    # records from the device reset it, so an observer that had nothing to acknowledge
    # lost its session, and with it its relation, after idle_timeout
    workdir = str(tmp_path)
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    pki = Pki(workdir)
    bridge = start_dtls_bridge(workdir, broker, pki, [("Silent", "stok")],
                               [("Listener", "ltok", None, b"listen-secret")], idle_timeout=3)
    proc = subprocess.Popen(["stdbuf", "-oL", OPENSSL, "-m", "get", "-s", "60", "-v", "6",
                             "-u", "ltok", "-k", "listen-secret",
                             coaps(bridge, "/api/v1/rpc")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    try:
        platform.wait_for("v1/gateway/connect", lambda p: p["device"] == "Listener")
        lines = Lines(proc)
        for n in (1, 2):
            # a session opened now, and silent, ends at the idle timeout: once it has, the
            # observer has sent nothing for longer than that too
            ended = bridge.read_log().count("idle: ended")
            silent = DtlsClient("127.0.0.1", bridge.dtls_port, client_context()).handshake()
            wait_until(lambda: bridge.read_log().count("idle: ended") > ended, 20,
                       "the silent session ended at the idle timeout")
            silent.close(notify=False)
            platform.send_rpc("Listener", 100 + n, "ping", {"n": n})
            wait_until(lambda: '"id":%d,' % (100 + n) in lines.text, 10,
                       "RPC %d at the observer: %s" % (n, lines.text[-1500:]))
        assert "observe of /rpc by Listener ended" not in bridge.read_log()
    finally:
        proc.terminate()
        proc.wait(10)
        bridge.stop()
        platform.close()
        broker.stop()
