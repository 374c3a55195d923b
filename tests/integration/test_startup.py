"""Start-up problems end with one line naming the port or file, and exit status 2.

The real ``twistd -n coapbridge`` with the shipped configuration; the tests run
as root, so an unwritable DATA_DIR is one under a regular file (no permission
bit stops root).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from bridge.core.actions import Entry
from bridge.edge.outbox import Outbox
from bridge.registry_url import driver_available
from conftest import BridgeProcess, free_ports, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SHIPPED = os.path.join(REPO, "conf", "coapbridge.yaml")


def start(tmp_path, data_dir=None, **env):
    """Run twistd with the shipped file; returns (exit status, stdout, stderr)."""
    full = dict(os.environ)
    full.update({"DATA_DIR": data_dir or str(tmp_path / "data"), "COAP_BIND_ADDRESS": "127.0.0.1",
                 "COAP_BIND_PORT": str(free_ports()), "METRICS_PORT": "0",
                 "MQTT_HOST": "127.0.0.1", "MQTT_PORT": "1"})
    full.update(env)
    done = subprocess.run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                           "--config", SHIPPED], capture_output=True, text=True, env=full,
                          cwd=str(tmp_path), timeout=60)
    return done.returncode, done.stdout, done.stderr


def assert_one_line(rc, out, err, *fragments):
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coapbridge: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "CoAP listening" not in out


def test_a_coap_port_in_use_is_one_line_naming_it(tmp_path):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        rc, out, err = start(tmp_path, COAP_BIND_PORT=str(port))
    finally:
        taken.close()
    assert_one_line(rc, out, err, "CoAP", "UDP 127.0.0.1 port %d" % port, "COAP_BIND_PORT")


def test_a_metrics_port_in_use_is_one_line_naming_it(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        rc, out, err = start(tmp_path, METRICS_PORT=str(port))
    finally:
        taken.close()
    assert_one_line(rc, out, err, "metrics", "TCP 127.0.0.1 port %d" % port, "METRICS_PORT")


def test_a_data_dir_that_cannot_be_written_is_one_line_for_twistd_and_the_cli(tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    data_dir = str(regular / "data")
    rc, out, err = start(tmp_path, data_dir=data_dir)
    assert_one_line(rc, out, err, data_dir, "DATA_DIR")
    done = subprocess.run([os.path.join(BIN, "coapbridge"), "--config", SHIPPED, "devices", "add",
                           "Dev A"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DATA_DIR=data_dir))
    assert_one_line(done.returncode, done.stdout, done.stderr, data_dir, "DATA_DIR")


def test_an_outbox_that_is_not_a_database_is_moved_aside_and_the_next_start_runs(tmp_path,
                                                                                  broker):
    data = tmp_path / "data"
    data.mkdir()
    damaged = b"this is not an SQLite file, but it holds someone's data" * 100
    (data / "outbox.sqlite3").write_bytes(damaged)
    rc, out, err = start(tmp_path)
    path = str(data / "outbox.sqlite3")
    assert_one_line(rc, out, err, path, "not a database", "moved it to")
    [kept] = [name for name in os.listdir(data) if name.startswith("outbox.sqlite3.corrupt-")]
    assert kept in err and (data / kept).read_bytes() == damaged  # nothing removed
    process = BridgeProcess(str(tmp_path), broker.port)  # the same data dir: a new outbox
    try:
        process.start()
    finally:
        process.stop()
    assert (data / kept).read_bytes() == damaged


def test_an_outbox_with_damaged_pages_is_one_line_naming_it(tmp_path):
    path = str(tmp_path / "data" / "outbox.sqlite3")
    box = Outbox(path)
    box.append([Entry(0, "Dev %d" % (n % 10), "default", "v1/gateway/telemetry",
                      b'{"n": %d, "pad": "%s"}' % (n, b"x" * 100), 1.0) for n in range(3000)])
    box.close()
    with open(path, "r+b") as handle:  # garbage over five pages of rows
        handle.seek(4096 * 20)
        handle.write(os.urandom(4096 * 5))
    with open(path, "rb") as handle:
        damaged = handle.read()
    rc, out, err = start(tmp_path)
    assert_one_line(rc, out, err, path, "damaged", "moved it to")
    [kept] = [name for name in os.listdir(tmp_path / "data")
              if name.startswith("outbox.sqlite3.corrupt-")]
    assert (tmp_path / "data" / kept).read_bytes() == damaged


def test_a_metrics_scrape_logs_nothing_at_info(tmp_path, broker):
    port = free_ports()
    process = BridgeProcess(str(tmp_path), broker.port, metrics={"port": port},
                            log_level="info")
    process.start()
    try:
        before = process.read_log()
        for _ in range(3):
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                          timeout=5).read().decode()
            assert "coapbridge_uplinks_acknowledged_total" in text
        after = process.read_log()
    finally:
        process.stop()
    assert after == before  # no access line per scrape


@pytest.mark.skipif(not driver_available(), reason="psycopg is installed on CPython only")
def test_a_registry_that_cannot_be_reached_is_one_line_naming_it_without_its_password(tmp_path):
    url = "postgresql://coap:hunter2@127.0.0.1:%d/registry" % free_ports()  # nothing listens
    rc, out, err = start(tmp_path, REGISTRY_URL=url)
    assert_one_line(rc, out, err, "cannot use the device registry "
                    "postgresql://coap:***@127.0.0.1:", "refused", "check REGISTRY_URL")
    assert "hunter2" not in out + err


def test_a_malformed_registry_url_is_a_configuration_error(tmp_path):
    rc, out, err = start(tmp_path, REGISTRY_URL="mysql://db/registry")
    assert rc == 2 and "registry.url: unknown scheme 'mysql'" in err, err
    assert "Traceback" not in out + err


def test_a_wrong_registry_password_from_a_file_is_one_line(tmp_path, postgres):
    secret = tmp_path / "registry-password"
    secret.write_text("not-the-password\n")
    url = postgres.url(password=False)
    rc, out, err = start(tmp_path, REGISTRY_URL=url, REGISTRY_PASSWORD_FILE=str(secret))
    assert_one_line(rc, out, err, "password authentication failed")
    secret.write_text(postgres.url().split(":")[2].split("@")[0] + "\n")  # the right one
    process = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge", "--config", SHIPPED],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(tmp_path),
        env=dict(os.environ, DATA_DIR=str(tmp_path / "data"), COAP_BIND_ADDRESS="127.0.0.1",
                 COAP_BIND_PORT=str(free_ports()), METRICS_PORT="0", MQTT_HOST="127.0.0.1",
                 MQTT_PORT="1", REGISTRY_URL=url, REGISTRY_PASSWORD_FILE=str(secret)))
    try:
        lines = []
        for line in process.stdout:
            lines.append(line.decode())
            if b"CoAP listening" in line:
                break
        assert any("Device registry postgresql://postgres:***@" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(20)


def test_without_n_the_daemon_prints_the_whole_refusal_and_logs_it(tmp_path):
    """twistd's waiting parent reads only 100 bytes of the daemon's status: the whole line
    reaches the operator's standard error (and the log) all the same."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), COAP_BIND_ADDRESS="127.0.0.1",
               COAP_BIND_PORT=str(port), METRICS_PORT="0", MQTT_HOST="127.0.0.1",
               MQTT_PORT="1")
    try:
        done = subprocess.run([os.path.join(BIN, "twistd"), "--pidfile", str(pidfile),
                               "--logfile", str(logfile), "coapbridge", "--config", SHIPPED],
                              capture_output=True, text=True, env=env, cwd=str(tmp_path),
                              timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1, (done.stdout, done.stderr)  # twistd's parent: 1 on failure
    lines = done.stderr.strip().splitlines()
    line = lines[0]
    assert line.startswith("coapbridge: cannot listen for CoAP on UDP 127.0.0.1 port %d: "
                           % port), done.stderr
    assert line.endswith("or choose another port with coap.bind_port (COAP_BIND_PORT)"), line
    assert len(line) > 100  # more than twistd passes on
    assert "Traceback" not in done.stderr
    assert "coapbridge did not start: see the line above" in done.stderr
    assert not pidfile.exists()
    # the daemon may still be writing its log when the parent exits
    wait_until(lambda: logfile.exists() and line in logfile.read_text(), 10, "the log line")
