"""The settings through the real programs: twistd configured by the environment alone (no
file), bind addresses refused or missing on this host (#27.4), the CLI's -c anywhere,
--version, check-config's summary and config show."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

from bridge.registry import Registry
from conftest import free_port, free_ports, wait_until
from protobuild import message_class
from test_startup import SHIPPED, assert_one_line, start

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
LIBCOAP = shutil.which("coap-client-notls")
TELEMETRY = """syntax = "proto3";
package meter;
message Reading { int64 energy_wh = 1; optional double voltage = 2; }
"""


def cli(*args, env=None, cwd=None):
    done = subprocess.run([os.path.join(BIN, "coapbridge"), *args], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), cwd=cwd, timeout=60)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1 ", "999.1.1.1"])
def test_a_bind_address_that_is_no_ip_address_is_refused_by_check_config_and_twistd(
        tmp_path, address):
    rc, out, err = cli("check-config", "-c", SHIPPED, env={"COAP_BIND_ADDRESS": address,
                                                             "DATA_DIR": str(tmp_path)})
    assert rc == 2 and "Traceback" not in out + err
    assert "1 problem" in err and "coap.bind_address: " in err, err
    rc, out, err = start(tmp_path, COAP_BIND_ADDRESS=address)
    assert rc == 2 and "Traceback" not in out + err, out + err
    assert "coap.bind_address: " in err and "CoAP listening" not in out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_this_host_does_not_have_is_said_so_at_start(tmp_path, workers):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): no host has it; binding sends nothing
    rc, out, err = start(tmp_path, COAP_BIND_ADDRESS="192.0.2.1", COAP_WORKERS=workers)
    assert_one_line(rc, out, err, "this host has no address 192.0.2.1",
                    "coap.bind_address (COAP_BIND_ADDRESS)")
    assert "stop the program" not in err


def test_a_metrics_address_this_host_does_not_have_is_said_so_at_start(tmp_path):
    rc, out, err = start(tmp_path, METRICS_PORT=str(free_port()),
                         METRICS_BIND_ADDRESS="192.0.2.1")
    assert_one_line(rc, out, err, "metrics on TCP 192.0.2.1", "this host has no address",
                    "metrics.bind_address (METRICS_BIND_ADDRESS)")


def test_twistd_runs_from_the_environment_alone_with_a_protobuf_profile(tmp_path, broker,
                                                                       platform):
    """No file (nothing in the working directory, no COAPBRIDGE_CONFIG): every setting from
    its variable, the metrics port and the PROTOBUF profile (DEVICE_PROFILES, the schema
    by its ...File key) included."""
    assert LIBCOAP, "libcoap's coap-client-notls is missing: install libcoap3-bin"
    schema = tmp_path / "meter.proto"
    schema.write_text(TELEMETRY)
    data = tmp_path / "data"
    Registry(str(data / "registry.sqlite3")).add("Env Meter", "envMeter", "meter")
    coap_port, metrics_port = free_ports(), free_port()
    env = dict(os.environ, COAP_BIND_ADDRESS="127.0.0.1", COAP_BIND_PORT=str(coap_port),
               METRICS_PORT=str(metrics_port), MQTT_HOST="127.0.0.1",
               MQTT_PORT=str(broker.port), DATA_DIR=str(data), LOG_LEVEL="debug",
               LIMITS_DEVICE_RATE="50", DEVICE_IDLE_TIMEOUT="120",
               COAP_DTLS_ENABLED="true", COAP_DTLS_BIND_PORT=str(free_ports()),
               DEVICE_PROFILES=json.dumps({"meter": {
                   "transportPayloadType": "PROTOBUF",
                   "deviceTelemetryProtoSchemaFile": str(schema)}}))
    env.pop("COAPBRIDGE_CONFIG", None)
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(tmp_path))
    try:
        wait_until(lambda: b"Connected to MQTT broker" in log.read_bytes()
                   or proc.poll() is not None, 60, "the bridge to connect")
        assert proc.poll() is None, log.read_text()
        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % metrics_port,
                                        timeout=5).read()
        assert health.strip() == b"ok"
        reading = message_class(tmp_path, TELEMETRY, "meter.Reading")(energy_wh=1234,
                                                                      voltage=229.5)
        payload = tmp_path / "payload.bin"
        payload.write_bytes(reading.SerializeToString())
        done = subprocess.run([LIBCOAP, "-m", "post", "-t", "42", "-f", str(payload),
                               "coap://127.0.0.1:%d/api/v1/envMeter/telemetry" % coap_port],
                              capture_output=True, timeout=30)
        assert done.returncode == 0, done
        found = platform.wait_for("v1/gateway/telemetry", lambda doc: "Env Meter" in doc)
        assert found["Env Meter"][0]["values"] == {"energyWh": "1234", "voltage": 229.5}
        text = log.read_text()
        assert "CoAPs (DTLS) listening on 127.0.0.1" in text
        assert text.count("CoAPs has no certificate (PSK only)") == 1
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_cli_takes_config_before_or_after_the_command_and_prints_its_version(tmp_path):
    env = {"DATA_DIR": str(tmp_path)}
    for args in (["-c", SHIPPED, "check-config"], ["check-config", "-c", SHIPPED],
                 ["check-config", "--config", SHIPPED]):
        rc, out, err = cli(*args, env=env)
        assert rc == 0 and out.startswith(SHIPPED + ": OK"), (args, out, err)
    rc, out, err = cli("devices", "list", "-c", str(tmp_path / "missing.yaml"), env=env)
    assert rc == 2 and "missing.yaml" in err  # the option after the command is the one used
    from bridge import __version__
    rc, out, _ = cli("--version")
    assert rc == 0 and out.strip() == "coapbridge " + __version__
    done = subprocess.run([os.path.join(BIN, "twistd"), "coapbridge", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "coapbridge " + __version__


def test_check_config_summarises_every_part_that_is_on_and_warns_of_psk_only(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "COAP_DTLS_ENABLED": "true", "COAP_WORKERS": "2",
           "DEVICE_PROFILES": '{"sensor": {"transportPayloadType": "PROTOBUF"}, '
                              '"thermostat": {}}'}
    rc, out, err = cli("check-config", env=env, cwd=str(tmp_path))
    assert rc == 0, err
    lines = dict(re.findall(r"^  (\w+): +(.*)$", out, re.M))
    assert lines["CoAP"] == "UDP 0.0.0.0 port 5683, 2 worker processes (SO_REUSEPORT)"
    assert lines["CoAPs"] == "UDP 0.0.0.0 port 5684, devices by PSK"
    assert lines["profiles"] == "sensor PROTOBUF, thermostat JSON; other types JSON"
    assert lines["registry"].startswith("sqlite://") and lines["metrics"].startswith("http://")
    assert err.startswith("warning: CoAPs has no certificate (PSK only)")


def test_config_show_and_env_print_values_origins_and_variables(tmp_path):
    rc, out, err = cli("config", "show", "-c", SHIPPED,
                       env={"MQTT_PASSWORD": "hunter2", "LIMIT_DEVICE_RATE": "3",
                            "DATA_DIR": str(tmp_path)})
    assert rc == 0, err
    assert re.search(r"^limits\.device_rate +3 +\(variable LIMIT_DEVICE_RATE\)$", out, re.M)
    assert re.search(r"^coap\.bind_port +5683 +\(default\)$", out, re.M)
    assert "hunter2" not in out and re.search(r'^mqtt\.password +"\*\*\*"', out, re.M)
    rc, out, err = cli("config", "show", env={"COAP_MAX_BODY": "10000000000"},
                       cwd=str(tmp_path))
    assert rc == 2 and "coap.max_body: must be 1 to 16777216 bytes" in err
    rc, out, _ = cli("config", "env")
    assert rc == 0 and re.search(r"^COAP_DTLS_PEM_CERT +dtls\.cert_file ", out, re.M)
