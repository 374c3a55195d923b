"""BERT (RFC 8323 §6) through the real bridge with real clients over coap+tcp.

libcoap 4.3.1's coap-client and aiocoap 0.4.17 both do BERT when both CSMs offer
Block-Wise-Transfer with a Max-Message-Size over 1152 (libcoap's ``-b`` takes at most
1024, and with ``-b`` it keeps to SZX 6: left out, it cuts a body that does not fit the
bridge's Max-Message-Size in BERT blocks; aiocoap does when the body passes its
``maximum_payload_size``). libcoap's debug output (``-v 7``) names each BERT option
(``Block2:0/M/BERT(7168)``); aiocoap's (``-v -v -v``) each Block1 answer and the options
of the last block of a download.

The bridge here takes messages of 8 KiB (``reliable.max_message_size``, the setting this
is about: BERT blocks are the whole kilobytes that fit it), so a 40 KiB package goes in
BERT blocks of 7 KiB and a 20 KB telemetry body comes in BERT Block1 blocks; the shipped
size (64 KiB blocks) is tested in test_rfc8323.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import BridgeProcess, Mosquitto, free_port, wait_until
from platform_sim import PlatformSim

pytestmark = pytest.mark.integration
NOTLS = shutil.which("coap-client-notls")
AIOCOAP = os.path.join(os.path.dirname(sys.executable), "aiocoap-client")
MESSAGE = 8192
PACKAGE = hashlib.sha256(b"bert").digest() * 1280  # 40 KiB
FIRMWARE = {"fw_title": "bert-blinker", "fw_version": "1.0", "fw_size": len(PACKAGE),
            "fw_checksum": hashlib.sha256(PACKAGE).hexdigest(), "fw_checksum_algorithm": "SHA256"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("bert"))
    broker = Mosquitto(workdir).start()
    platform = PlatformSim(broker.port)
    port = free_port()
    bridge = BridgeProcess(workdir, broker.port,
                           reliable={"tcp": {"enabled": True, "bind_port": port},
                                     "max_message_size": MESSAGE},
                           ota={"source": "directory", "directory": os.path.join(workdir, "ota")})
    os.makedirs(os.path.join(workdir, "ota", "bert-blinker"))
    with open(os.path.join(workdir, "ota", "bert-blinker", "1.0"), "wb") as handle:
        handle.write(PACKAGE)
    for n in range(1, 5):
        bridge.add_device("Bert %d" % n, "btok%d" % n)
    bridge.tcp_port = port
    bridge.start()
    wait_until(lambda: "CoAP over coap+tcp" in bridge.read_log(), 10, "the listener")
    yield platform, bridge
    bridge.stop()
    platform.close()
    broker.stop()


def url(bridge, path):
    return "coap+tcp://127.0.0.1:%d%s" % (bridge.tcp_port, path)


def body_of_size(size):
    """A JSON object of about ``size`` bytes, different values in each kilobyte."""
    values = {"k%03d" % n: "%04d" % n * 24 for n in range(size // 110)}
    return json.dumps(values, separators=(",", ":"))


def test_libcoap_downloads_a_package_in_bert_blocks(env, tmp_path):
    platform, bridge = env
    platform.set_attributes("Bert 1", {}, FIRMWARE)
    out_file = tmp_path / "fw.bin"
    done = subprocess.run([NOTLS, "-v", "7", "-o", str(out_file),
                           url(bridge, "/api/v1/btok1/firmware?title=bert-blinker&version=1.0")],
                          capture_output=True, timeout=60)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert out_file.read_bytes() == PACKAGE, out[-1500:]
    # 40 KiB in blocks of 7 KiB: 0, 7, 14, 21, 28, 35 (the last 5 KiB)
    blocks = re.findall(r"c:2\.05 .*?Block2:(\d+)/([M_])/BERT\((\d+)\)", out)
    assert [(int(n), more, int(size)) for n, more, size in blocks] == \
        [(n, "M", 7168) for n in range(0, 35, 7)] + [(35, "_", 5120)], out[-3000:]


def test_libcoap_posts_telemetry_in_bert_blocks(env, tmp_path):
    platform, bridge = env
    body = body_of_size(20000)
    payload = tmp_path / "telemetry.json"
    payload.write_text(body)
    done = subprocess.run([NOTLS, "-v", "7", "-m", "post", "-f", str(payload),
                           url(bridge, "/api/v1/btok2/telemetry")],
                          capture_output=True, timeout=60)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    sent = re.findall(r"c:POST .*?Block1:(\d+)/([M_])/BERT\((\d+)\)", out)
    assert len(sent) >= 3 and all(size % 1024 == 0 for _, more, size in
                                  [(n, m, int(s)) for n, m, s in sent] if more == "M"), out[-3000:]
    assert re.search(r"c:2\.01 .*Block1:%s/_/BERT" % sent[-1][0], out), out[-3000:]
    expected = json.loads(body)
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"] == expected for e in p.get("Bert 2", [])))


def aiocoap(*args, timeout=60):
    done = subprocess.run([AIOCOAP, "-v", "-v", "-v", *args], capture_output=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def test_aiocoap_downloads_a_package_in_bert_blocks(env):
    platform, bridge = env
    platform.set_attributes("Bert 3", {}, FIRMWARE)
    rc, out, log = aiocoap(url(bridge, "/api/v1/btok3/firmware?title=bert-blinker&version=1.0"))
    assert rc == 0 and out.rstrip(b"\n") == PACKAGE, log[-1500:]
    # the whole body carries the options of its last block: 35, after 0, 7, 14, 21 and 28
    assert "Block2 (23): BlockwiseTuple(block_number=35, more=False, size_exponent=7)" in log, \
        log[-3000:]


def test_aiocoap_posts_telemetry_in_bert_blocks(env):
    platform, bridge = env
    body = body_of_size(20000)
    rc, out, log = aiocoap("-m", "POST", "--content-format", "application/json",
                           "--payload", body, url(bridge, "/api/v1/btok4/telemetry"))
    assert rc == 0, log[-1500:]
    # aiocoap's first block is 1 KiB (sent before it has the bridge's CSM), the others 7 KiB
    acked = re.findall(r"Block1 option received, number = (\d+), more = (\d), size_exp = 7",
                       log)
    assert len(acked) >= 3 and acked[-1][1] == "0" and \
        [int(n) for n, _ in acked[1:]] == list(range(1, 1 + 7 * (len(acked) - 1), 7)), \
        log[-3000:]
    expected = json.loads(body)
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any(e["values"] == expected for e in p.get("Bert 4", [])))


def test_the_bridge_logged_no_error_and_no_traceback(env):
    platform, bridge = env
    log = bridge.read_log()
    assert "Traceback" not in log and "[error]" not in log.lower(), log[-3000:]
