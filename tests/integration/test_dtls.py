"""CoAPs through the real bridge: libcoap's OpenSSL and GnuTLS clients (and an OpenSSL
client of our own where a test needs resumption or to look at the datagrams) against
``twistd -n coapbridge`` with DTLS on, a real mosquitto and the platform simulator.
Certificates are made here with ``cryptography``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

import coapraw as raw
import dtlscerts
from conftest import BridgeProcess, Mosquitto, free_ports, wait_until
from dtlsclient import DtlsClient, client_context
from platform_sim import PlatformSim
from bridge.dtls import records

pytestmark = pytest.mark.integration
OPENSSL = shutil.which("coap-client-openssl")
GNUTLS = shutil.which("coap-client-gnutls")
CLIENTS = {"openssl": OPENSSL, "gnutls": GNUTLS}
PACKAGE = bytes(range(256)) * 64  # 16 KiB firmware
FIRMWARE = {"fw_title": "blinker", "fw_version": "2.0", "fw_size": len(PACKAGE),
            "fw_checksum": hashlib.sha256(PACKAGE).hexdigest(), "fw_checksum_algorithm": "SHA256"}
HELLO_VERIFY_REQUEST = 3


class Pki:
    """The bridge's certificate, the CA devices chain to, and device certificates."""

    def __init__(self, directory: str):
        self.dir = directory
        self.ca = dtlscerts.ca()
        self.intermediate = dtlscerts.issue("coapbridge intermediate", self.ca, ca=True)
        server = dtlscerts.issue("localhost", self.ca, dns="localhost")
        self.cert, self.key = server.write(directory, "bridge")
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as handle:  # the intermediate too: see dtls.ca_file
            handle.write(self.ca.pem() + self.intermediate.pem())
        self.root_only = os.path.join(directory, "root.pem")
        with open(self.root_only, "wb") as handle:
            handle.write(self.ca.pem())

    def device(self, name: str, issuer=None, chain: bool = False, **kwargs):
        issued = dtlscerts.issue(name, issuer or self.ca, **kwargs)
        cert, key = issued.write(self.dir, name, chain=chain)
        return issued, cert, key


def start_dtls_bridge(workdir, broker, pki, devices=(), psk_devices=(), metrics_port=0,
                      **dtls):
    settings = {"enabled": True, "cert_file": pki.cert, "key_file": pki.key,
                "ca_file": pki.ca_file, "bind_port": free_ports()}
    settings.update(dtls)
    bridge = BridgeProcess(workdir, broker.port, dtls=settings,
                           ota={"source": "directory", "directory": os.path.join(workdir, "ota")},
                           metrics={"port": metrics_port, "bind_address": "127.0.0.1"})
    bridge.metrics_port = metrics_port
    os.makedirs(os.path.join(workdir, "ota", "blinker"), exist_ok=True)
    with open(os.path.join(workdir, "ota", "blinker", "2.0"), "wb") as handle:
        handle.write(PACKAGE)
    for name, token in devices:
        bridge.add_device(name, token)
    for name, token, identity, key in psk_devices:
        bridge.registry.add(name, token, "default", psk_identity=identity, psk_key=key)
    bridge.dtls_port = settings["bind_port"]
    bridge.start()
    wait_until(lambda: "CoAPs (DTLS) listening" in bridge.read_log(), 10, "DTLS to listen")
    return bridge


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("dtls"))
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    pki = Pki(workdir)
    bridge = start_dtls_bridge(workdir, broker, pki,
                               [("Dtls %d" % n, "dtok%d" % n) for n in range(1, 10)],
                               psk_devices=[("Psk 1", "ptok1", None, b"psk-secret-1"),
                                            ("Psk 2", "ptok2", "sensor-42", b"psk-secret-2"),
                                            ("Psk 3", "ptok3", None, b"psk-secret-3")])
    yield broker, platform, bridge, pki
    bridge.stop()
    platform.close()
    broker.stop()


def coaps(bridge, path):
    return "coaps://127.0.0.1:%d%s" % (bridge.dtls_port, path)


def client(which, *args, timeout=30):
    binary = CLIENTS[which]
    assert binary, "libcoap3-bin's coap-client-%s is missing (make test installs it)" % which
    done = subprocess.run([binary, "-v", "6", *args], capture_output=True, timeout=timeout)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)
    return (codes[-1] if codes else None), out


def first_answer(proc) -> str:
    """Read an observing client's output (-v 6) up to the answer to its registration, so
    that a push made after it is a notification, not folded into that answer. ``proc``
    runs under ``stdbuf -oL`` (libcoap's client prints a received message without a
    flush) with an unbuffered pipe (bufsize=0: communicate() with a timeout reads the
    pipe itself, and would miss what a buffer had read ahead)."""
    seen = []
    for text in iter(proc.stdout.readline, b""):
        seen.append(text.decode(errors="replace"))
        if re.search(r"t:(?:ACK|CON|NON) c:2\.\d\d", seen[-1]):
            return "".join(seen)
    raise AssertionError("the observer ended before its first answer: %s"
                         % "".join(seen)[-1500:])


def payloads(out):
    """The payloads of the responses libcoap printed (-v 6), in order."""
    return re.findall(r"t:(?:ACK|CON|NON) c:2\.\d\d [^\n]*:: '([^\n]*)'$", out, re.M)


# -- token in the path over an encrypted channel ------------------------------------------

@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_token_device_posts_telemetry_over_dtls_without_a_client_certificate(env, which):
    broker, platform, bridge, pki = env
    code, out = client(which, "-m", "post", "-e", '{"over_dtls": "%s"}' % which,
                       coaps(bridge, "/api/v1/dtok1/telemetry"))
    assert code == "2.01", out[-800:]
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get("over_dtls") == which
                                    for e in p.get("Dtls 1", [])))
    assert "no client credential" in bridge.read_log()


def test_unknown_token_over_dtls_is_4_01(env):
    broker, platform, bridge, pki = env
    code, out = client("openssl", "-m", "post", "-e", "{}",
                       coaps(bridge, "/api/v1/nosuchtoken/telemetry"))
    assert code == "4.01", out[-500:]


def test_attribute_read_over_dtls(env):
    broker, platform, bridge, pki = env
    platform.set_attributes("Dtls 2", {"a": 1}, {"s": "x"})
    code, out = client("openssl", "-m", "get",
                       coaps(bridge, "/api/v1/dtok2/attributes?clientKeys=a&sharedKeys=s"))
    assert code == "2.05", out[-500:]
    assert json.loads(payloads(out)[-1]) == {"client": {"a": 1}, "shared": {"s": "x"}}


def test_attribute_observe_gets_notifications_over_the_session(env):
    broker, platform, bridge, pki = env
    platform.set_attributes("Dtls 3", {}, {"mode": "eco", "unit": "C"})
    proc = subprocess.Popen(["stdbuf", "-oL", OPENSSL, "-m", "get", "-s", "5", "-v", "6",
                             coaps(bridge, "/api/v1/dtok3/attributes")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == "Dtls 3")
    out = first_answer(proc)
    platform.push_attributes("Dtls 3", {"mode": "comfort"})
    out += proc.communicate(timeout=20)[0].decode(errors="replace")
    assert [json.loads(p) for p in payloads(out)] == [{"mode": "eco", "unit": "C"},
                                                      {"mode": "comfort"}], out[-1500:]


def test_rpc_observe_notification_and_reply_over_dtls(env, tmp_path):
    broker, platform, bridge, pki = env
    proc = subprocess.Popen(["stdbuf", "-oL", GNUTLS, "-m", "get", "-s", "5", "-v", "6",
                             coaps(bridge, "/api/v1/dtok4/rpc")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == "Dtls 4")
    out = first_answer(proc)
    platform.send_rpc("Dtls 4", 77, "blink", {"times": 3})
    out += proc.communicate(timeout=20)[0].decode(errors="replace")
    assert '{"id":77,"method":"blink","params":{"times":3}}' in out, out[-1500:]
    code, out = client("openssl", "-m", "post", "-e", '{"blinked": 3}',
                       coaps(bridge, "/api/v1/dtok4/rpc/77"))
    assert code == "2.01", out[-500:]
    platform.wait_for("v1/gateway/rpc", lambda p: p == {"device": "Dtls 4", "id": 77,
                                                        "data": {"blinked": 3}})


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_firmware_download_by_block2_over_dtls(env, tmp_path, which):
    broker, platform, bridge, pki = env
    platform.set_attributes("Dtls 5", {}, FIRMWARE)
    out_file = tmp_path / ("fw-%s.bin" % which)
    code, out = client(which, "-b", "512", "-o", str(out_file),
                       coaps(bridge, "/api/v1/dtok5/firmware?title=blinker&version=2.0"),
                       timeout=60)
    assert out_file.read_bytes() == PACKAGE, out[-800:]


# -- pre-shared keys -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_psk_whose_identity_is_the_token(env, which):
    broker, platform, bridge, pki = env
    code, out = client(which, "-m", "post", "-e", '{"psk": "%s"}' % which, "-u", "ptok1",
                       "-k", "psk-secret-1", coaps(bridge, "/api/v1/ptok1/telemetry"))
    assert code == "2.01", out[-800:]
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get("psk") == which
                                    for e in p.get("Psk 1", [])))


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_psk_with_an_identity_of_its_own(env, which):
    broker, platform, bridge, pki = env
    code, out = client(which, "-m", "post", "-e", '{"own_identity": 1}', "-u", "sensor-42",
                       "-k", "psk-secret-2", coaps(bridge, "/api/v1/ptok2/telemetry"))
    assert code == "2.01", out[-800:]
    assert "PSK identity sens" in bridge.read_log()  # masked like a token


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_psk_devices_use_the_token_less_urls(env, which):
    broker, platform, bridge, pki = env
    code, out = client(which, "-m", "post", "-e", '{"tokenless": "%s"}' % which, "-u",
                       "sensor-42", "-k", "psk-secret-2", coaps(bridge, "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, "Psk 2", "tokenless", which)
    platform.set_attributes("Psk 2", {"c": 1}, {"s": 2})
    code, out = client(which, "-m", "get", "-u", "sensor-42", "-k", "psk-secret-2",
                       coaps(bridge, "/api/v1/attributes?clientKeys=c&sharedKeys=s"))
    assert code == "2.05" and json.loads(payloads(out)[-1]) == {"client": {"c": 1},
                                                                "shared": {"s": 2}}, out[-800:]


def test_a_psk_session_with_another_devices_token_is_4_01(env):
    broker, platform, bridge, pki = env
    code, out = client("openssl", "-m", "post", "-e", "{}", "-u", "ptok1", "-k", "psk-secret-1",
                       coaps(bridge, "/api/v1/dtok1/telemetry"))
    assert code == "4.01", out[-500:]


def test_psk_rpc_observe_and_reply_without_a_token(env):
    broker, platform, bridge, pki = env
    proc = subprocess.Popen(["stdbuf", "-oL", OPENSSL, "-m", "get", "-s", "5", "-v", "6",
                             "-u", "ptok1", "-k", "psk-secret-1", coaps(bridge, "/api/v1/rpc")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    platform.wait_for("v1/gateway/connect", lambda p: p["device"] == "Psk 1")
    out = first_answer(proc)
    platform.send_rpc("Psk 1", 91, "reboot", {})
    out += proc.communicate(timeout=20)[0].decode(errors="replace")
    assert '{"id":91,"method":"reboot","params":{}}' in out, out[-1500:]
    code, out = client("gnutls", "-m", "post", "-e", '{"rebooted": true}', "-u", "ptok1",
                       "-k", "psk-secret-1", coaps(bridge, "/api/v1/rpc/91"))
    assert code == "2.01", out[-500:]
    platform.wait_for("v1/gateway/rpc", lambda p: p == {"device": "Psk 1", "id": 91,
                                                        "data": {"rebooted": True}})


def test_a_session_ends_when_its_psk_leaves_the_registry(env):
    broker, platform, bridge, pki = env
    peer = DtlsClient("127.0.0.1", bridge.dtls_port,
                      client_context(psk=("ptok3", b"psk-secret-3"))).handshake()
    assert peer.exchange(raw.request(raw.POST, "/api/v1/ptok3/telemetry",
                                     b'{"before": 1}')).code_str == "2.01"
    bridge.registry.remove("Psk 3")
    assert peer.recv(10.0) is None and peer.closed_by_peer
    wait_until(lambda: "left the registry" in bridge.read_log(), 5, "the session's end logged")
    again = DtlsClient("127.0.0.1", bridge.dtls_port,
                       client_context(psk=("ptok3", b"psk-secret-3")), timeout=3)
    with pytest.raises(Exception):  # unknown_psk_identity now
        again.handshake()
    again.close(notify=False)


# -- handshakes ----------------------------------------------------------------------------

def test_the_first_answer_is_a_hello_verify_request_no_bigger_than_the_client_hello(env):
    broker, platform, bridge, pki = env
    peer = DtlsClient("127.0.0.1", bridge.dtls_port, client_context()).handshake()
    first_out = peer.received[0]
    assert first_out[0] == records.HANDSHAKE and first_out[13] == HELLO_VERIFY_REQUEST
    assert len(first_out) < 100
    reply = peer.exchange(raw.request(raw.POST, "/api/v1/dtok6/telemetry", b'{"hvr": 1}'))
    assert reply.code_str == "2.01"
    peer.close()
    # a spoofed ClientHello (the same one, from another socket) gets only the cookie again
    probe = DtlsClient("127.0.0.1", bridge.dtls_port, client_context())
    try:
        probe.conn.do_handshake()
    except Exception:
        pass
    hello = probe.conn.bio_read(65536)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    sock.sendto(hello, ("127.0.0.1", bridge.dtls_port))
    answer = sock.recv(70000)
    assert answer[13] == HELLO_VERIFY_REQUEST and len(answer) <= len(hello)
    with pytest.raises(socket.timeout):
        sock.recv(70000)  # nothing else
    sock.close()
    probe.close(notify=False)


def test_a_rebound_port_resumes_the_session_and_goes_on(env):
    # a PSK device without a token in its path: the resumed session keeps its identity
    broker, platform, bridge, pki = env
    ctx = client_context(psk=("ptok1", b"psk-secret-1"))
    first = DtlsClient("127.0.0.1", bridge.dtls_port, ctx).handshake()
    assert first.exchange(raw.request(raw.POST, "/api/v1/telemetry", b'{"n": 1}',
                                      mid=1)).code_str == "2.01"
    saved = first.session()
    first.close(notify=False)  # the NAT forgot the mapping: no close_notify
    second = DtlsClient("127.0.0.1", bridge.dtls_port, ctx, session=saved).handshake()
    assert second.resumed
    assert second.exchange(raw.request(raw.POST, "/api/v1/telemetry", b'{"n": 2}',
                                       mid=2)).code_str == "2.01"
    telemetry_of(platform, "Psk 1", "n", 2)
    assert "(resumed," in bridge.read_log()
    second.close()


def register_certificate(bridge, name, issued):
    bridge.registry.add(name, None, "default", cert_pem=issued.pem().decode())


def telemetry_of(platform, name, key, value):
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get(key) == value for e in p.get(name, [])))


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_ecdsa_and_rsa_certificate_devices_post_without_a_token(env, which, kind):
    broker, platform, bridge, pki = env
    name = "Cert %s %s" % (kind, which)
    issued, cert, key = pki.device("dev-%s-%s" % (kind, which), kind=kind)
    register_certificate(bridge, name, issued)
    code, out = client(which, "-m", "post", "-e", '{"cert": "%s"}' % kind, "-c", cert,
                       "-j", key, "-C", pki.root_only, coaps(bridge, "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, name, "cert", kind)


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_a_device_certificate_from_an_intermediate_ca(env, which):
    # the OpenSSL client sends only its leaf: the intermediate is in dtls.ca_file
    broker, platform, bridge, pki = env
    name = "Chained %s" % which
    issued, cert, key = pki.device("dev-chain-%s" % which, issuer=pki.intermediate, chain=True)
    register_certificate(bridge, name, issued)
    code, out = client(which, "-m", "post", "-e", '{"chain": 1}', "-c", cert, "-j", key,
                       "-C", pki.root_only, coaps(bridge, "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, name, "chain", 1)


def test_an_unregistered_certificate_is_4_01_unless_the_path_has_a_token(env):
    # as ThingsBoard: a certificate the CA vouches for but the registry does not know
    # leaves the token in the path to authenticate (a token device with a factory cert)
    broker, platform, bridge, pki = env
    issued, cert, key = pki.device("dev-unregistered")
    code, out = client("openssl", "-m", "post", "-e", '{"t": 1}', "-c", cert, "-j", key,
                       coaps(bridge, "/api/v1/telemetry"))
    assert code == "4.01", out[-500:]
    code, out = client("openssl", "-m", "post", "-e", '{"factory_cert": 1}', "-c", cert,
                       "-j", key, coaps(bridge, "/api/v1/dtok8/telemetry"))
    assert code == "2.01", out[-500:]
    platform.wait_for("v1/gateway/telemetry", lambda p: "Dtls 8" in p)


def test_a_certificate_device_downloads_firmware_by_block2(env, tmp_path):
    broker, platform, bridge, pki = env
    issued, cert, key = pki.device("dev-fw")
    register_certificate(bridge, "Cert fw", issued)
    platform.set_attributes("Cert fw", {}, FIRMWARE)
    out_file = tmp_path / "fw.bin"
    code, out = client("openssl", "-b", "1024", "-o", str(out_file), "-c", cert, "-j", key,
                       coaps(bridge, "/fw?title=blinker&version=2.0"), timeout=60)
    assert out_file.read_bytes() == PACKAGE, out[-800:]


def test_a_session_ends_when_its_certificate_leaves_the_registry(env):
    broker, platform, bridge, pki = env
    issued, cert, key = pki.device("dev-leaving")
    register_certificate(bridge, "Cert leaving", issued)
    peer = DtlsClient("127.0.0.1", bridge.dtls_port, client_context(cert=cert, key=key)).handshake()
    assert peer.exchange(raw.request(raw.POST, "/api/v1/telemetry",
                                     b'{"before": 1}')).code_str == "2.01"
    bridge.registry.remove("Cert leaving")
    assert peer.recv(10.0) is None and peer.closed_by_peer
    peer.close(notify=False)


@pytest.mark.parametrize("which,alert", [("openssl", "certificate expired"),
                                         ("gnutls", "Alert '45'")])
def test_an_expired_device_certificate_fails_the_handshake(env, which, alert):
    broker, platform, bridge, pki = env
    now = dtlscerts.NOW
    issued, cert, key = pki.device("dev-expired-%s" % which, not_before=now - 9 * dtlscerts.DAY,
                                   not_after=now - dtlscerts.DAY)
    code, out = client(which, "-m", "post", "-e", "{}", "-c", cert, "-j", key,
                       "-C", pki.root_only, coaps(bridge, "/api/v1/dtok8/telemetry"))
    assert code is None, out[-800:]
    assert alert.lower() in out.lower()
    wait_until(lambda: "certificate has expired (depth 0)" in bridge.read_log(), 5,
               "the failure logged")


@pytest.mark.parametrize("which,alert", [("openssl", "unknown ca"), ("gnutls", "Alert '48'")])
def test_an_untrusted_device_certificate_fails_the_handshake(env, which, alert):
    broker, platform, bridge, pki = env
    stranger = dtlscerts.ca("some other CA")
    issued, cert, key = pki.device("dev-stranger-%s" % which, issuer=stranger)
    code, out = client(which, "-m", "post", "-e", "{}", "-c", cert, "-j", key,
                       "-C", pki.root_only, coaps(bridge, "/api/v1/dtok8/telemetry"))
    assert code is None, out[-800:]
    assert alert.lower() in out.lower()


@pytest.mark.parametrize("which,alert", [("openssl", "unknown psk identity"),
                                         ("gnutls", "Alert '115'")])
def test_an_unknown_psk_identity_is_refused_with_an_alert(env, which, alert):
    broker, platform, bridge, pki = env
    code, out = client(which, "-m", "get", "-u", "nobody-%s" % which, "-k", "some key",
                       coaps(bridge, "/api/v1/attributes"))
    assert code is None, out[-800:]
    assert alert.lower() in out.lower()


def test_the_bridge_logged_no_error_and_no_traceback(env):
    broker, platform, bridge, pki = env
    text = bridge.read_log()
    assert "Traceback" not in text
    assert "#error]" not in text and "#critical]" not in text


# -- bounds --------------------------------------------------------------------------------

def test_past_max_sessions_handshakes_are_refused_and_idle_sessions_are_reaped(tmp_path):
    # a test about dtls.max_sessions and dtls.idle_timeout: both small here
    workdir = str(tmp_path)
    broker = Mosquitto(workdir).start()
    pki = Pki(workdir)
    bridge = start_dtls_bridge(workdir, broker, pki, [("Bound", "btok")],
                               [("Bound PSK", "bptok", None, b"right key")], max_sessions=2,
                               idle_timeout=3, handshake_timeout=2)
    try:
        ctx = client_context()
        kept = [DtlsClient("127.0.0.1", bridge.dtls_port, ctx).handshake() for _ in range(2)]
        refused = DtlsClient("127.0.0.1", bridge.dtls_port, ctx, timeout=2.5)
        with pytest.raises(TimeoutError):
            refused.handshake()
        refused.close(notify=False)
        assert "(dtls.max_sessions; " in bridge.read_log()
        # the idle timeout ends both (close_notify), and then there is room again
        wait_until(lambda: bridge.read_log().count("idle: ended") >= 2, 10, "idle reaping")
        for peer in kept:
            assert peer.recv(1.0) is None and peer.closed_by_peer
            peer.close(notify=False)
        again = DtlsClient("127.0.0.1", bridge.dtls_port, ctx).handshake()
        assert again.exchange(raw.request(raw.POST, "/api/v1/btok/telemetry",
                                          b'{"room": 1}')).code_str == "2.01"
        again.close()
        # a wrong PSK key: this client's bad Finished is dropped without an alert, so it
        # waits in vain, and the bridge reaps the half-open session at its deadline
        code, out = client("openssl", "-B", "4", "-m", "get", "-u", "bptok", "-k", "wrong key",
                           coaps(bridge, "/api/v1/bptok/attributes"))
        assert code is None, out[-500:]
        # (the first handshake that did not complete is summed up at once, see
        # bridge/dtls/failures.py)
        wait_until(lambda: "1 not finished within dtls.handshake_timeout" in bridge.read_log(),
                   10, "the reaping")
    finally:
        bridge.stop()
        broker.stop()
