"""Third-party CoAP clients against the real bridge: libcoap, aiocoap and node coap-cli."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import BridgeProcess

pytestmark = pytest.mark.integration

LIBCOAP = shutil.which("coap-client-notls")
AIOCOAP = os.path.join(os.path.dirname(sys.executable), "aiocoap-client")
NODE_COAP = os.environ.get("NODE_COAP_CLI") or shutil.which("coap")


def run(args, stdin=None, timeout=30):
    done = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def libcoap(*args):
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin (make test does)"
    rc, out = run([LIBCOAP, "-v", "6", *args])
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)
    return codes[-1] if codes else None, out


def test_libcoap_posts_telemetry_attributes_and_claim(bridge, platform):
    url = bridge.url + "/api/v1/tokenA"
    assert libcoap("-m", "post", "-e", '{"libcoap_t": 1}', url + "/telemetry")[0] == "2.01"
    assert libcoap("-m", "post", "-e", '{"libcoap_a": "x"}', url + "/attributes")[0] == "2.01"
    assert libcoap("-m", "post", "-e", '{"secretKey": "lc"}', url + "/claim")[0] == "2.01"
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any("libcoap_t" in e["values"] for e in p.get("Dev A", [])))
    platform.wait_for("v1/gateway/attributes", lambda p: p == {"Dev A": {"libcoap_a": "x"}})
    platform.wait_for("v1/gateway/claim",
                      lambda p: p == {"Dev A": {"secretKey": "lc", "durationMs": 0}})


def test_libcoap_non_request_and_error_codes(bridge, platform):
    code, out = libcoap("-N", "-m", "post", "-e", '{"libcoap_non": 2}',
                        bridge.url + "/api/v1/tokenA/telemetry")
    assert code == "2.01" and "t:NON c:2.01" in out
    assert libcoap("-m", "post", "-e", '{"a": 1}', bridge.url + "/api/v1/wrong/telemetry")[0] == "4.01"
    assert libcoap("-m", "post", "-e", "{", bridge.url + "/api/v1/tokenA/telemetry")[0] == "4.00"
    assert libcoap("-m", "put", "-e", "{}", bridge.url + "/api/v1/tokenA/telemetry")[0] == "4.05"
    assert libcoap("-m", "get", bridge.url + "/nothing/here")[0] == "4.04"


def test_aiocoap_client_posts_telemetry(bridge, platform):
    rc, out = run([AIOCOAP, "-m", "POST", "--payload", '{"aiocoap_t": 3}',
                   bridge.url + "/api/v1/tokenA/telemetry"])
    assert rc == 0, out
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any("aiocoap_t" in e["values"] for e in p.get("Dev A", [])))
    rc, out = run([AIOCOAP, "-m", "POST", "--payload", '{"a": 1}',
                   bridge.url + "/api/v1/wrong/telemetry"])
    assert rc != 0 and "4.01 Unauthorized" in out


def test_node_coap_cli_posts_telemetry_from_stdin(bridge, platform):
    assert NODE_COAP, "node coap-cli is missing: set NODE_COAP_CLI or run make test"
    rc, out = run([NODE_COAP, "post", bridge.url + "/api/v1/tokenA/telemetry"],
                  stdin=b'{"node_t": 4}')
    assert "(2.01)" in out, out
    platform.wait_for("v1/gateway/telemetry",
                      lambda p: any("node_t" in e["values"] for e in p.get("Dev A", [])))
    rc, out = run([NODE_COAP, "post", bridge.url + "/api/v1/wrong/telemetry"], stdin=b'{"a": 1}')
    assert "(4.01)" in out, out


@pytest.fixture(scope="module")
def dual_stack_bridge(broker, tmp_path_factory):
    process = BridgeProcess(str(tmp_path_factory.mktemp("bridge6")), broker.port,
                            bind_address="::")
    process.add_device("Dev Six", "tokenSix")
    process.start()
    yield process
    process.stop()


def test_dual_stack_bind_serves_ipv6_and_ipv4_clients(dual_stack_bridge, platform):
    port = dual_stack_bridge.coap_port
    for host, key in (("[::1]", "via_v6"), ("127.0.0.1", "via_v4")):
        url = "coap://%s:%d/api/v1/tokenSix/telemetry" % (host, port)
        assert libcoap("-m", "post", "-e", '{"%s": 1}' % key, url)[0] == "2.01"
        platform.wait_for("v1/gateway/telemetry",
                          lambda p, key=key: any(key in e["values"] for e in p.get("Dev Six", [])))
