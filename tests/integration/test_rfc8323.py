"""CoAP over TCP, TLS and WebSockets (RFC 8323) through the real bridge: libcoap's
notls, OpenSSL and GnuTLS clients, aiocoap over coap+tcp, coaps+tcp and coap+ws, and
headless Chromium posting telemetry over a CoAP WebSocket, against ``twistd -n
coapbridge`` with a real mosquitto and the platform simulator; raw sockets for the
faults (a connection cut mid-message, no CSM, a slow reader, 10,000 idle connections)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import dtlscerts
from conftest import BridgeProcess, Mosquitto, free_port, wait_until
from platform_sim import PlatformSim
from bridge.coap import signalling as sig
from bridge.coap.framing import StreamDecoder, encode
from bridge.coap.message import Message
from bridge.coap.options import OBSERVE, URI_PATH, URI_QUERY, encode_uint
from bridge.coap.reliable_requests import body_of, message_of

pytestmark = pytest.mark.integration
NOTLS = shutil.which("coap-client-notls")
OPENSSL = shutil.which("coap-client-openssl")
GNUTLS = shutil.which("coap-client-gnutls")
CLIENTS = {"notls": NOTLS, "openssl": OPENSSL, "gnutls": GNUTLS}
AIOCOAP = os.path.join(os.path.dirname(sys.executable), "aiocoap-client")
OBSERVER = os.path.join(os.path.dirname(__file__), "aiocoap_observe.py")
CHROMIUM = shutil.which("chromium")
PACKAGE = bytes(range(256)) * 80  # 20 KiB firmware
FIRMWARE = {"fw_title": "blinker", "fw_version": "3.0", "fw_size": len(PACKAGE),
            "fw_checksum": hashlib.sha256(PACKAGE).hexdigest(), "fw_checksum_algorithm": "SHA256"}
BIG = hashlib.sha256(b"big").digest() * 6400  # 200 KiB: four BERT blocks of the shipped size
BIG_FIRMWARE = {"fw_title": "blinker", "fw_version": "4.0", "fw_size": len(BIG),
                "fw_checksum": hashlib.sha256(BIG).hexdigest(),
                "fw_checksum_algorithm": "SHA256"}
POST = 0x02


class Pki:
    def __init__(self, directory: str):
        self.dir = directory
        self.ca = dtlscerts.ca()
        server = dtlscerts.issue("localhost", self.ca, dns="localhost", ip="127.0.0.1")
        self.cert, self.key = server.write(directory, "bridge")
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as handle:
            handle.write(self.ca.pem())

    def device(self, name: str):
        issued = dtlscerts.issue(name, self.ca)
        cert, key = issued.write(self.dir, name)
        return issued, cert, key


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reliable"))
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    pki = Pki(workdir)
    ports = {name: free_port() for name in ("tcp", "tls", "ws", "wss")}
    reliable = {name: {"enabled": True, "bind_port": port} for name, port in ports.items()}
    bridge = BridgeProcess(workdir, broker.port, reliable=reliable,
                           dtls={"cert_file": pki.cert, "key_file": pki.key,
                                 "ca_file": pki.ca_file},
                           ota={"source": "directory", "directory": os.path.join(workdir, "ota")},
                           # local provisioning: the only way to provision without a platform
                           provisioning={"mode": "local", "profiles": [
                               {"key": "rel-key", "secret": "rel-secret",
                                "device_type": "default"}]})
    os.makedirs(os.path.join(workdir, "ota", "blinker"), exist_ok=True)
    with open(os.path.join(workdir, "ota", "blinker", "3.0"), "wb") as handle:
        handle.write(PACKAGE)
    with open(os.path.join(workdir, "ota", "blinker", "4.0"), "wb") as handle:
        handle.write(BIG)
    for n in range(1, 24):
        bridge.add_device("Rel %d" % n, "rtok%d" % n)
    bridge.registry.add("Rel Psk", "rpsk", "default", psk_identity="rel-psk",
                        psk_key=b"rel-secret-1")
    bridge.ports = ports
    bridge.start()
    wait_until(lambda: bridge.read_log().count("CoAP over") >= 4, 10, "the listeners")
    yield broker, platform, bridge, pki
    bridge.stop()
    platform.close()
    broker.stop()


def url(bridge, scheme, path, host="127.0.0.1"):
    kind = {"coap+tcp": "tcp", "coaps+tcp": "tls", "coap+ws": "ws", "coaps+ws": "wss"}[scheme]
    return "%s://%s:%d%s" % (scheme, host, bridge.ports[kind], path)


def libcoap(which, *args, timeout=30):
    binary = CLIENTS[which]
    assert binary, "libcoap3-bin's coap-client-%s is missing (make test installs it)" % which
    done = subprocess.run([binary, "-v", "6", *args], capture_output=True, timeout=timeout)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    codes = re.findall(r"t:CON c:(\d\.\d\d)", out)
    return (codes[-1] if codes else None), out


def aiocoap(*args, timeout=30, env=None):
    done = subprocess.run([AIOCOAP, *args], capture_output=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    return done.returncode, done.stdout.decode(errors="replace") + \
        done.stderr.decode(errors="replace")


def telemetry_of(platform, name, key, value):
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"].get(key) == value for e in p.get(name, [])))


# -- libcoap ---------------------------------------------------------------------------

def test_libcoap_posts_telemetry_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    code, out = libcoap("notls", "-m", "post", "-e", '{"over": "tcp"}',
                        url(bridge, "coap+tcp", "/api/v1/rtok1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, "Rel 1", "over", "tcp")


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_libcoap_posts_telemetry_over_coaps_tcp_with_the_token_in_the_path(env, which):
    broker, platform, bridge, pki = env
    code, out = libcoap(which, "-m", "post", "-e", '{"over": "tls-%s"}' % which,
                        url(bridge, "coaps+tcp", "/api/v1/rtok2/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, "Rel 2", "over", "tls-" + which)


@pytest.mark.parametrize("which", ["openssl", "gnutls"])
def test_certificate_device_posts_over_coaps_tcp_without_a_token(env, which):
    broker, platform, bridge, pki = env
    issued, cert, key = pki.device("rel-dev-%s" % which)
    bridge.registry.add("Rel Cert %s" % which, None, "default", cert_pem=issued.pem().decode())
    code, out = libcoap(which, "-m", "post", "-e", '{"cert": "%s"}' % which, "-c", cert,
                        "-j", key, "-C", pki.ca_file,
                        url(bridge, "coaps+tcp", "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, "Rel Cert %s" % which, "cert", which)


def test_psk_device_posts_over_coaps_tcp_without_a_token(env):
    broker, platform, bridge, pki = env
    code, out = libcoap("openssl", "-m", "post", "-e", '{"psk": 1}', "-u", "rel-psk", "-k",
                        "rel-secret-1", url(bridge, "coaps+tcp", "/api/v1/telemetry"))
    assert code == "2.01", out[-800:]
    telemetry_of(platform, "Rel Psk", "psk", 1)


def test_psk_over_tls_1_3_through_the_same_callback(env):
    # libcoap 4.3.1's coap-client keeps PSK to TLS 1.2 (it sets an identity-hint callback,
    # "CoAP Client restricted to (D)TLS1.2 with Identity Hint callback"), so OpenSSL's own
    # client offers the external PSK in TLS 1.3, its suites in its own order (SHA-384
    # first): the bridge's TLS 1.2-style server callback serves it, in a SHA-256 suite
    # (edge/tls.py). The request uses the token-less URL: only the PSK identity names the
    # device. The Release after it makes the bridge close once it has answered.
    broker, platform, bridge, pki = env
    request = csm_frame() + tcp_request(POST, "/api/v1/telemetry", b'{"psk13": 1}', b"\x13") + \
        encode(sig.RELEASE, b"", b"")
    done = subprocess.run(["openssl", "s_client", "-connect",
                           "127.0.0.1:%d" % bridge.ports["tls"], "-tls1_3", "-brief", "-ign_eof",
                           "-nocommands", "-psk_identity", "rel-psk",
                           "-psk", b"rel-secret-1".hex()],
                          input=request, capture_output=True, timeout=30)
    info = done.stderr.decode(errors="replace")
    assert "Protocol version: TLSv1.3" in info
    assert re.search(r"Ciphersuite: TLS_\w+_SHA256\n", info), info  # the PSK's hash
    assert "Peer certificate" not in info, info  # a PSK handshake: no certificate
    answers = [decoded(frame) for frame in StreamDecoder(1 << 20).feed(done.stdout)]
    assert [(a.code, a.token) for a in answers if a.code >> 5 != 7] == [(0x41, b"\x13")], info
    telemetry_of(platform, "Rel Psk", "psk13", 1)


def test_token_less_url_without_a_credential_is_4_01(env):
    broker, platform, bridge, pki = env
    code, out = libcoap("notls", "-m", "post", "-e", '{"x": 1}',
                        url(bridge, "coap+tcp", "/api/v1/telemetry"))
    assert code in ("4.01", "4.04"), out[-800:]


def test_attribute_read_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    platform.set_attributes("Rel 3", {"a": 1}, {"s": "x"})
    code, out = libcoap("notls", "-m", "get",
                        url(bridge, "coap+tcp",
                            "/api/v1/rtok3/attributes?clientKeys=a&sharedKeys=s"))
    assert code == "2.05", out[-800:]
    assert '{"client":{"a":1},"shared":{"s":"x"}}' in out.replace(" ", "")


def download(bridge, tmp_path, token, version, *args):
    """The firmware ``version`` as libcoap's coap+tcp client got it, and its output."""
    out_file = tmp_path / "fw.bin"
    code, out = libcoap("notls", *args, "-o", str(out_file),
                        url(bridge, "coap+tcp", "/api/v1/%s/firmware?title=blinker&version=%s"
                            % (token, version)), timeout=60)
    return out_file.read_bytes() if out_file.exists() else b"", out


def test_firmware_by_block2_over_coap_tcp(env, tmp_path):
    broker, platform, bridge, pki = env
    platform.set_attributes("Rel 4", {}, FIRMWARE)
    got, out = download(bridge, tmp_path, "rtok4", "3.0", "-b", "1024")
    assert got == PACKAGE, out[-800:]


def test_firmware_in_bert_blocks_of_64_kib_over_coap_tcp(env, tmp_path):
    # without -b, libcoap asks no block size and takes the bridge's BERT blocks (RFC 8323
    # §6): the whole kilobytes of the shipped reliable.max_message_size (66,560)
    broker, platform, bridge, pki = env
    platform.set_attributes("Rel 18", {}, BIG_FIRMWARE)
    got, out = download(bridge, tmp_path, "rtok18", "4.0", "-v", "7")
    assert got == BIG, out[-800:]
    blocks = re.findall(r"c:2\.05 .*?Block2:(\d+)/([M_])/BERT\((\d+)\)", out)
    assert [(int(n), more, int(size)) for n, more, size in blocks] == \
        [(0, "M", 65536), (64, "M", 65536), (128, "M", 65536), (192, "_", 8192)], out[-2000:]


def test_rpc_observe_and_reply_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    proc = subprocess.Popen(["stdbuf", "-oL", NOTLS, "-m", "get", "-s", "6", "-v", "6",
                             url(bridge, "coap+tcp", "/api/v1/rtok5/rpc")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    out = ""
    for line in iter(proc.stdout.readline, b""):  # up to the registration's answer
        out += line.decode(errors="replace")
        if re.search(r"t:CON c:2\.\d\d", out):
            break
    platform.send_rpc("Rel 5", 91, "blink", {"times": 2})
    out += proc.communicate(timeout=30)[0].decode(errors="replace")
    assert '{"id":91,"method":"blink","params":{"times":2}}' in out, out[-1500:]
    code, out = libcoap("notls", "-m", "post", "-e", '{"blinked": 2}',
                        url(bridge, "coap+tcp", "/api/v1/rtok5/rpc/91"))
    assert code == "2.01", out[-500:]
    platform.wait_for("v1/gateway/rpc", lambda p: p == {"device": "Rel 5", "id": 91,
                                                        "data": {"blinked": 2}})


# -- aiocoap ---------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["coap+tcp", "coap+ws"])
def test_aiocoap_posts_telemetry(env, scheme):
    broker, platform, bridge, pki = env
    rc, out = aiocoap("-m", "POST", "--content-format", "application/json", "--payload",
                      '{"aio": "%s"}' % scheme, url(bridge, scheme, "/api/v1/rtok6/telemetry"))
    assert rc == 0, out[-800:]
    telemetry_of(platform, "Rel 6", "aio", scheme)


@pytest.mark.parametrize("scheme", ["coaps+tcp", "coaps+ws"])
def test_aiocoap_posts_telemetry_over_tls(env, scheme):
    broker, platform, bridge, pki = env
    # aiocoap verifies the bridge's certificate against the system's trust store, which
    # SSL_CERT_FILE replaces with the test CA
    rc, out = aiocoap("-m", "POST", "--payload", '{"aio": "%s"}' % scheme,
                      url(bridge, scheme, "/api/v1/rtok7/telemetry"),
                      env={"SSL_CERT_FILE": pki.ca_file})
    assert rc == 0 and "not closed by peer" not in out, out[-800:]
    telemetry_of(platform, "Rel 7", "aio", scheme)


@pytest.mark.parametrize("scheme, token, device", [("coap+ws", "rtok8", "Rel 8"),
                                                   ("coap+tcp", "rtok9", "Rel 9"),
                                                   ("coaps+tcp", "rtok10", "Rel 10")])
def test_aiocoap_observes_shared_attributes(env, scheme, token, device):
    broker, platform, bridge, pki = env
    platform.set_attributes(device, {}, {"mode": "eco", "unit": "C"})  # two: see PlatformSim
    proc = subprocess.Popen([sys.executable, OBSERVER,
                             url(bridge, scheme, "/api/v1/%s/attributes" % token), "3", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, SSL_CERT_FILE=pki.ca_file))
    first = json.loads(proc.stdout.readline())
    assert first["code"] == "2.05", first
    assert json.loads(first["payload"]) == {"mode": "eco", "unit": "C"}
    platform.push_attributes(device, {"mode": "comfort"})
    platform.push_attributes(device, {"mode": "boost"})
    lines = [json.loads(line) for line in proc.communicate(timeout=30)[0].splitlines()
             if line.startswith(b"{")]
    assert [json.loads(n["payload"]) for n in lines] == [{"mode": "comfort"}, {"mode": "boost"}]
    assert lines[0]["observe"] < lines[1]["observe"]


# -- every API over a raw coap+tcp connection ---------------------------------------

def tcp_request(code, path, payload=b"", token=b"\x11", observe=None):
    parts, _, query = path.partition("?")
    options = [(URI_PATH, p.encode()) for p in parts.strip("/").split("/")]
    options += [(URI_QUERY, q.encode()) for q in query.split("&")] if query else []
    options += [(OBSERVE, encode_uint(observe))] if observe is not None else []
    options.sort(key=lambda option: option[0])
    return encode(code, token, body_of(Message(code, token, tuple(options), payload)))


def decoded(frame):
    return message_of(frame)


def tcp_exchange(bridge, request, timeout=15.0):
    sock = connect(bridge)
    try:
        sock.sendall(csm_frame() + request)
        frames = read_frames(sock, 2, timeout)
    finally:
        sock.close()
    assert [f.code >> 5 for f in frames[:1]] == [7] and len(frames) == 2, frames
    return decoded(frames[1])


def test_claim_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    answer = tcp_exchange(bridge, tcp_request(POST, "/api/v1/rtok15/claim",
                                              b'{"secretKey": "k", "durationMs": 60000}'))
    assert answer.code == 0x41
    platform.wait_for("v1/gateway/claim", lambda p: p == {
        "Rel 15": {"secretKey": "k", "durationMs": 60000}})


def test_client_side_rpc_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    platform.client_rpc_answer = {"time": 1700000000}
    try:
        answer = tcp_exchange(bridge, tcp_request(POST, "/api/v1/rtok15/rpc",
                                                  b'{"method": "getTime", "params": {}}'))
    finally:
        platform.client_rpc_answer = None
    assert answer.code == 0x45 and json.loads(answer.payload) == {"time": 1700000000}


def test_provisioning_then_telemetry_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    answer = tcp_exchange(bridge, tcp_request(POST, "/api/v1/provision", json.dumps(
        {"deviceName": "Rel Provisioned", "provisionDeviceKey": "rel-key",
         "provisionDeviceSecret": "rel-secret"}).encode()))
    assert answer.code == 0x41, answer.payload
    token = json.loads(answer.payload)["credentialsValue"]
    answer = tcp_exchange(bridge, tcp_request(POST, "/api/v1/%s/telemetry" % token,
                                              b'{"provisioned": true}'))
    assert answer.code == 0x41
    telemetry_of(platform, "Rel Provisioned", "provisioned", True)


def test_firmware_by_size_and_chunk_over_coap_tcp(env):
    broker, platform, bridge, pki = env
    platform.set_attributes("Rel 16", {}, FIRMWARE)
    answer = tcp_exchange(bridge, tcp_request(
        0x01, "/api/v1/rtok16/firmware?title=blinker&version=3.0&size=1000&chunk=2"))
    assert answer.code == 0x45 and answer.payload == PACKAGE[2000:3000]


def test_rpc_held_when_the_connection_closes_goes_to_the_next_registration(env):
    broker, platform, bridge, pki = env
    sock = connect(bridge)
    sock.sendall(csm_frame() + tcp_request(0x01, "/api/v1/rtok17/rpc", observe=0))
    assert [f.code for f in read_frames(sock, 2)] == [sig.CSM, 0x43]  # 2.03: registered
    sock.close()  # the relation ends with the connection
    wait_until(lambda: "observe of /rpc by Rel 17 ended" in bridge.read_log(), 10,
               "the relation to end")
    platform.send_rpc("Rel 17", 55, "reboot", {})
    sock = connect(bridge)
    try:
        sock.sendall(csm_frame() + tcp_request(0x01, "/api/v1/rtok17/rpc", observe=0))
        frames = read_frames(sock, 3)
    finally:
        sock.close()
    notification = decoded(frames[2])
    assert json.loads(notification.payload) == {"id": 55, "method": "reboot", "params": {}}
    assert notification.observe is not None


# -- a browser -------------------------------------------------------------------------

PAGE = """<!doctype html><html><body><p id="r">waiting</p><script>
const ws = new WebSocket("ws://127.0.0.1:%(port)d/.well-known/coap", "coap");
ws.binaryType = "arraybuffer";
const enc = new TextEncoder();
function option(delta, value) { return [(delta << 4) | value.length, ...value]; }
ws.onopen = () => {
  ws.send(new Uint8Array([0x00, 0xE1]));  // our CSM: Len 0, TKL 0, 7.01
  const path = ["api", "v1", "%(token)s", "telemetry"].map(s => enc.encode(s));
  const body = [...option(11, path[0]), ...option(0, path[1]), ...option(0, path[2]),
                ...option(0, path[3]), 0xFF, ...enc.encode('{"browser": "%(ua)s"}')];
  ws.send(new Uint8Array([0x01, 0x02, 0x42, ...body]));  // TKL 1, POST, token 0x42
};
ws.onmessage = (event) => {
  const m = new Uint8Array(event.data);
  const code = (m[1] >> 5) + "." + String(m[1] & 31).padStart(2, "0");
  if (m[1] >> 5 != 7) document.getElementById("r").textContent = "answer " + code;
};
ws.onerror = () => { document.getElementById("r").textContent = "error"; };
</script></body></html>"""


def page_text(proc, element, timeout):
    """The text of ``element`` on Chromium's page once it is no longer "waiting", read
    over the DevTools protocol (Runtime.evaluate on the page's target)."""
    from websockets.sync.client import connect as ws_connect
    seen = ""
    for line in iter(proc.stderr.readline, b""):
        seen += line.decode(errors="replace")
        found = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", seen)
        if found:
            break
    assert found, "Chromium did not start its DevTools endpoint: %s" % seen[-1500:]
    def page_target():
        with urllib.request.urlopen("http://%s/json/list" % found.group(1)) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        return pages[0]["webSocketDebuggerUrl"] if pages else None
    target = wait_until(page_target, 30, "Chromium's page")
    with ws_connect(target, max_size=None) as devtools:
        deadline = time.monotonic() + timeout
        text, n = "waiting", 0
        while text == "waiting" and time.monotonic() < deadline:
            n += 1
            devtools.send(json.dumps({"id": n, "method": "Runtime.evaluate", "params": {
                "expression": "document.getElementById(%r).textContent" % element,
                "returnByValue": True}}))
            while True:
                reply = json.loads(devtools.recv(timeout=10))
                if reply.get("id") == n:
                    break
            text = reply.get("result", {}).get("result", {}).get("value", "waiting")
            time.sleep(0.1)
    return text


def test_headless_chromium_posts_telemetry_over_a_coap_websocket(env, tmp_path):
    broker, platform, bridge, pki = env
    assert CHROMIUM, "chromium is missing (scripts/install.sh system --test installs it)"
    page = tmp_path / "coap.html"
    page.write_text(PAGE % {"port": bridge.ports["ws"], "token": "rtok11", "ua": "chromium"})
    profile = tempfile.mkdtemp(dir=str(tmp_path))
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--user-data-dir=" + profile, "--remote-debugging-port=0", page.as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert page_text(proc, "r", 30) == "answer 2.01"
    finally:
        proc.kill()
        proc.wait(10)
    telemetry_of(platform, "Rel 11", "browser", "chromium")


# -- faults (raw sockets) --------------------------------------------------------------

def csm_frame():
    return encode(sig.CSM, b"", sig.csm_body(1152, False))


def telemetry_frame(token, payload, tok=b"\x01"):
    return tcp_request(POST, "/api/v1/%s/telemetry" % token, payload, tok)


def read_frames(sock, want, timeout=10.0):
    decoder, got = StreamDecoder(1 << 20), []
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        got += decoder.feed(data)
    return got


def connect(bridge, source="127.0.0.1"):
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", bridge.ports["tcp"]))
    return sock


def test_a_connection_cut_mid_message_stores_nothing_and_harms_no_other(env):
    broker, platform, bridge, pki = env
    sock = connect(bridge)
    frame = telemetry_frame("rtok12", b'{"cut": 1}')
    sock.sendall(csm_frame() + frame[:len(frame) - 3])
    sock.close()
    sock = connect(bridge)
    sock.sendall(csm_frame() + telemetry_frame("rtok12", b'{"cut": 2}'))
    frames = read_frames(sock, 2)
    sock.close()
    assert [f.code for f in frames] == [sig.CSM, 0x41]
    telemetry_of(platform, "Rel 12", "cut", 2)
    assert not any(e["values"].get("cut") == 1 for p in platform.received("v1/gateway/telemetry")
                   for e in p.get("Rel 12", []))


def test_a_client_that_never_sends_its_csm_is_aborted(env):
    broker, platform, bridge, pki = env
    sock = connect(bridge)
    started = time.monotonic()
    frames = read_frames(sock, 2, timeout=30)  # the bridge's CSM, then its Abort
    assert [f.code for f in frames] == [sig.CSM, sig.ABORT]
    assert b"no CSM within 10 s" in sig.parse(frames[1]).payload
    assert sock.recv(10) == b""  # and it closed the connection
    assert time.monotonic() - started >= 9.0
    sock.close()


def test_a_request_before_the_csm_is_aborted(env):
    broker, platform, bridge, pki = env
    sock = connect(bridge)
    sock.sendall(telemetry_frame("rtok12", b'{"early": 1}'))
    frames = read_frames(sock, 2)
    assert [f.code for f in frames] == [sig.CSM, sig.ABORT]
    assert b"before the peer's CSM" in sig.parse(frames[1]).payload
    sock.close()


def test_a_slow_reader_makes_the_bridge_stop_reading_not_buffer(env):
    broker, platform, bridge, pki = env
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bridge.ports["tcp"]))
    # a request that the bridge answers with 4.04, sent over and over, never read
    request = tcp_request(0x01, "/api/v1/rtok13/" + "nowhere" * 30, token=b"\x05")
    sock.sendall(csm_frame())
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 20
    stalled_since = None
    pending = b""
    while time.monotonic() < deadline:
        try:
            pending = pending or request * 50
            done = sock.send(pending)
            pending = pending[done:]
            sent += done
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2.0:
                break  # the bridge stopped reading us
            time.sleep(0.05)
    assert stalled_since is not None, "the bridge read %d bytes without pausing" % sent
    # what it took in is bounded by its write buffer and the sockets' buffers, not by
    # what was sent
    assert sent < 64 * 1024 * 1024
    # it still serves others, and this one once it reads again
    other = connect(bridge)
    other.sendall(csm_frame() + telemetry_frame("rtok13", b'{"others": 1}'))
    assert [f.code for f in read_frames(other, 2)] == [sig.CSM, 0x41]
    other.close()
    sock.setblocking(True)
    sock.settimeout(10)
    got = 0
    while got < 100000:
        data = sock.recv(65536)
        if not data:
            break
        got += len(data)
    assert got >= 100000
    sock.close()


def test_ten_thousand_idle_connections(env):
    broker, platform, bridge, pki = env
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10500:
        pytest.skip("the hard open-file limit (%d) is below 10,500" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds 10,000
    socks = []
    try:
        csm = csm_frame()
        # four source addresses: the shipped per-address limit is 4096
        for n in range(10000):
            sock = connect(bridge, "127.0.0.%d" % (2 + n % 4))
            sock.sendall(csm)
            socks.append(sock)
        # every one got the bridge's CSM and is still open
        for sock in socks[::97] + socks[-3:]:
            frames = read_frames(sock, 1)
            assert frames and frames[0].code == sig.CSM
        # the bridge still serves a new connection at once
        sock = connect(bridge)
        sock.sendall(csm + telemetry_frame("rtok14", b'{"busy": 10000}'))
        assert [f.code for f in read_frames(sock, 2)] == [sig.CSM, 0x41]
        sock.close()
        telemetry_of(platform, "Rel 14", "busy", 10000)
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_bridge_logged_no_error_and_no_traceback(env):
    broker, platform, bridge, pki = env
    text = bridge.read_log()
    assert "Traceback" not in text
    assert "#error]" not in text and "#critical]" not in text


def test_a_taken_tcp_port_stops_the_start_with_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), COAP_BIND_ADDRESS="127.0.0.1",
               COAP_BIND_PORT=str(free_port()), METRICS_PORT="0", MQTT_HOST="127.0.0.1",
               MQTT_PORT="1", COAP_TCP_ENABLED="true", COAP_TCP_BIND_PORT=str(port))
    try:
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "twistd"), "-n",
                               "--pidfile=", "coapbridge"], capture_output=True, text=True,
                              env=env, cwd=str(tmp_path), timeout=60)
    finally:
        taken.close()
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-1500:]
    assert "cannot listen for coap+tcp on TCP 127.0.0.1 port %d" % port in out, out[-1500:]
    assert "reliable.tcp.bind_port (RELIABLE_TCP_BIND_PORT, COAP_TCP_BIND_PORT)" in out
    assert "Traceback" not in out
