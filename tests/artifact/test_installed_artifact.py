"""Smoke tests of the installed artifact, configured by environment variables alone.

What a user gets from ``pip install coapbridge-*.whl`` (or the image) must serve every
transport and payload format: plain CoAP, CoAPs with a PSK and with a certificate, a
PROTOBUF profile, two workers, the metrics port and its probes, and the ``coapbridge``
command. ``make test`` builds the wheel and sdist, installs the wheel into a fresh
virtualenv outside the checkout and points ``TEST_ARTIFACT_VENV`` at it;
``make test-image`` points ``TEST_ARTIFACT_IMAGE`` at the image. Without either the
module is skipped (a run of part of the suite); a run of the whole suite always has one.
One bridge (two workers, DTLS on, a PROTOBUF profile) serves all the device tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import urllib.error
import urllib.request

import pytest

import dtlscerts
import installed
from integration.conftest import Mosquitto, Platform, free_port, free_ports, wait_until

INSTALL = installed.from_environment()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(INSTALL is None, reason="no installed artifact to test: make test "
                       "builds and installs the wheel (%s), make test-image the image (%s)"
                       % (installed.VENV_ENV, installed.IMAGE_ENV)),
]
NOTLS = shutil.which("coap-client-notls")
OPENSSL = shutil.which("coap-client-openssl")
SCHEMA = """syntax = "proto3";
package meter;
message Reading { int64 energy_wh = 1; optional double voltage = 2; }
"""
# meter.Reading {energy_wh: 1234, voltage: 229.5}, encoded by hand: field 1 varint, field 2
# fixed64 (the harness needs no protoc of its own)
READING = b"\x08\xd2\x09" + b"\x11" + struct.pack("<d", 229.5)


def coap(binary, *args, timeout=30):
    assert binary, "libcoap3-bin's CoAP clients are missing (make test installs them)"
    done = subprocess.run([binary, "-v", "6", *args], capture_output=True, timeout=timeout)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)
    return (codes[-1] if codes else None), out


def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


class Setup:
    """The files and environment of one installed bridge."""

    def __init__(self, workdir, broker_port):
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        INSTALL.prepare_dir(self.data_dir)
        files = os.path.join(workdir, "files")
        os.makedirs(files)
        ca = dtlscerts.ca()
        self.bridge_cert, self.bridge_key = dtlscerts.issue(
            "localhost", ca, dns="localhost").write(files, "bridge")
        self.ca_file = os.path.join(files, "ca.pem")
        with open(self.ca_file, "wb") as handle:
            handle.write(ca.pem())
        self.device_cert, self.device_key = dtlscerts.issue("meter-x509", ca).write(
            files, "device")
        self.schema = os.path.join(files, "meter.proto")
        with open(self.schema, "w") as handle:
            handle.write(SCHEMA)
        if isinstance(INSTALL, installed.Image):
            INSTALL.share(workdir)
        self.coap_port = free_ports()
        self.dtls_port = free_ports()
        self.metrics_port = free_port()
        self.env = {
            "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker_port),
            "COAP_BIND_ADDRESS": "127.0.0.1", "COAP_BIND_PORT": str(self.coap_port),
            "COAP_DTLS_ENABLED": "true", "COAP_DTLS_BIND_PORT": str(self.dtls_port),
            "COAP_DTLS_CERT_FILE": self.bridge_cert, "COAP_DTLS_KEY_FILE": self.bridge_key,
            "COAP_DTLS_CA_FILE": self.ca_file,
            "COAP_WORKERS": "2",
            "METRICS_BIND_ADDRESS": "127.0.0.1", "METRICS_PORT": str(self.metrics_port),
            "DATA_DIR": self.data_dir,
            "DEVICE_PROFILES": json.dumps({"meter": {
                "transportPayloadType": "PROTOBUF",
                "deviceTelemetryProtoSchemaFile": self.schema}}),
        }

    def cli(self, *args, **env):
        return INSTALL.run(["coapbridge", *args], dict(self.env, **env))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    mosquitto = Mosquitto(str(tmp_path_factory.mktemp("artifact-broker"))).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def platform(broker):
    client = Platform(broker.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def setup(broker, tmp_path_factory):
    return Setup(str(tmp_path_factory.mktemp("artifact")), broker.port)


@pytest.fixture(scope="module")
def devices(setup):
    """Devices added by the installed ``coapbridge devices add``, each kind once."""
    added = [setup.cli("devices", "add", "Plain 1", "--token", "plaintoken1"),
             setup.cli("devices", "add", "Valve 1", "--token", "psktoken1",
                       "--psk-identity", "valve-1", "--psk-key", "valve secret 1"),
             setup.cli("devices", "add", "Meter X", "--cert", setup.device_cert),
             setup.cli("devices", "add", "Meter 1", "--token", "metertoken1",
                       "--type", "meter")]
    for done in added:
        assert done.returncode == 0, done.stdout + done.stderr
    return added


@pytest.fixture(scope="module")
def bridge(setup, devices, platform):
    """``twistd -n coapbridge`` of the install, ready (both workers up, MQTT connected)."""
    log = os.path.join(setup.workdir, "bridge.log")
    proc = INSTALL.popen(["twistd", "-n", "--pidfile=", "coapbridge"], setup.env, log)

    def read_log():
        with open(log, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    try:
        wait_until(lambda: proc.poll() is not None
                   or http_get(setup.metrics_port, "/readyz")[0] == 200,
                   90, "the installed bridge to be ready on METRICS_PORT %d"
                   % setup.metrics_port)
        assert proc.poll() is None, read_log()
        yield read_log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def telemetry_of(platform, device, key):
    return platform.wait_for("v1/gateway/telemetry", lambda p: any(
        key in entry["values"] for entry in p.get(device, [])))


def test_the_bridge_imported_is_the_installed_one_with_every_package():
    where = INSTALL.module_path("bridge")
    assert where and os.path.dirname(os.path.realpath(where)) != os.path.join(
        installed.CHECKOUT, "bridge"), where  # not the checkout's sources
    if isinstance(INSTALL, installed.Virtualenv):
        assert os.path.realpath(where).startswith(os.path.realpath(INSTALL.venv) + os.sep)
    for module in ("bridge.dtls", "bridge.dtls.records", "bridge.edge.dtls",
                   "bridge.core.formats.protobuf", "bridge.glue"):
        assert INSTALL.module_path(module), "%s is not in the %s" % (module, INSTALL.name)


def test_protobuf_schemas_compile_with_the_installed_protoc_alone():
    """grpcio-tools' protoc, with no system protoc on PATH (where the install has it)."""
    if not INSTALL.module_path("grpc_tools"):
        pytest.skip("no grpcio-tools in this install (PyPy): the system protoc serves")
    done = INSTALL.run(["python", "-c", "from bridge.edge import protoc; "
                        "print(protoc.protoc_command()[1:], protoc.system_protoc()); "
                        "protoc.fixed_messages()"], {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "['-m', 'grpc_tools.protoc'] None", done.stdout


def test_devices_add_and_list(setup, devices):
    assert "token: plaintoken1" not in devices[0].stdout  # given, so not printed back
    assert "certificate: " in devices[2].stdout
    done = setup.cli("devices", "list")
    assert done.returncode == 0, done.stderr
    for name in ("Plain 1", "Valve 1", "Meter X", "Meter 1"):
        assert name in done.stdout
    assert done.stdout.rstrip().endswith("4 devices")


def test_check_config_with_dtls_and_a_protobuf_profile(setup):
    done = setup.cli("check-config")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "built-in defaults: OK", done.stdout  # no file: the environment alone
    said = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines[1:]}
    assert said["CoAP"] == "UDP 127.0.0.1 port %d, 2 worker processes (SO_REUSEPORT)" \
        % setup.coap_port
    assert said["CoAPs"].startswith("UDP 127.0.0.1 port %d, devices by PSK" % setup.dtls_port)
    assert "certificate (CA %s)" % setup.ca_file in said["CoAPs"]
    assert said["profiles"] == "meter PROTOBUF; other types JSON"
    assert said["metrics"].startswith("http://127.0.0.1:%d/metrics" % setup.metrics_port)


def test_check_config_reports_a_bad_setting_in_one_line_and_exit_status_2(setup):
    done = setup.cli("check-config", COAP_DTLS_CERT_FILE="/nonexistent/bridge.pem")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "dtls.cert_file" in done.stderr, done.stderr


def test_a_postgresql_registry_without_the_extra_is_one_line_naming_it(setup):
    if INSTALL.module_path("psycopg"):
        pytest.skip("this install has the postgresql extra (the image installs it)")
    done = setup.cli("check-config", REGISTRY_URL="postgresql://coap@127.0.0.1:1/fleet")
    assert done.returncode == 2
    assert "pip install 'coapbridge[postgresql]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_plain_coap_telemetry_reaches_the_platform(bridge, setup, platform):
    code, out = coap(NOTLS, "-m", "post", "-e", '{"plain_t": 1}',
                     "coap://127.0.0.1:%d/api/v1/plaintoken1/telemetry" % setup.coap_port)
    assert code == "2.01", out
    telemetry_of(platform, "Plain 1", "plain_t")


def test_coaps_with_a_psk_device(bridge, setup, platform):
    code, out = coap(OPENSSL, "-m", "post", "-e", '{"psk_t": 1}', "-u", "valve-1",
                     "-k", "valve secret 1",
                     "coaps://127.0.0.1:%d/api/v1/telemetry" % setup.dtls_port)
    assert code == "2.01", out
    telemetry_of(platform, "Valve 1", "psk_t")


def test_coaps_with_a_certificate_device(bridge, setup, platform):
    code, out = coap(OPENSSL, "-m", "post", "-e", '{"x509_t": 1}', "-c", setup.device_cert,
                     "-j", setup.device_key,
                     "coaps://127.0.0.1:%d/api/v1/telemetry" % setup.dtls_port)
    assert code == "2.01", out
    telemetry_of(platform, "Meter X", "x509_t")


def test_a_protobuf_profile_from_device_profiles(bridge, setup, platform, tmp_path):
    bad = setup.cli("check-config",
                    DEVICE_PROFILES='{"probe": {"transportPayloadType": "CBOR"}}')
    assert bad.returncode == 2 and "device_profiles.probe.transportPayloadType" in bad.stderr, \
        bad.stdout + bad.stderr  # the variable is read, and checked like a file's
    payload = tmp_path / "reading.bin"
    payload.write_bytes(READING)
    code, out = coap(NOTLS, "-m", "post", "-t", "42", "-f", str(payload),
                     "coap://127.0.0.1:%d/api/v1/metertoken1/telemetry" % setup.coap_port)
    assert code == "2.01", out
    found = telemetry_of(platform, "Meter 1", "energyWh")
    assert [e["values"] for e in found["Meter 1"] if "energyWh" in e["values"]] == [
        {"energyWh": "1234", "voltage": 229.5}]


def test_probes_and_metrics_of_two_workers_on_metrics_port(bridge, setup):
    assert http_get(setup.metrics_port, "/healthz") == (200, "ok\n")
    status, body = http_get(setup.metrics_port, "/readyz")
    assert status == 200, body
    status, metrics = http_get(setup.metrics_port, "/metrics")
    assert status == 200
    for worker in ("1", "2"):
        assert re.search(r'^coapbridge_mqtt_connected\{[^}]*worker="%s"[^}]*\} 1(\.0)?$'
                         % worker, metrics, re.M), metrics[:2000]
