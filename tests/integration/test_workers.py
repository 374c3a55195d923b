"""COAP_WORKERS=2: the supervisor and its two workers, with the shipped defaults otherwise.

Devices post numbered telemetry from a socket each (a source port each: tests/loadgen.py),
so the kernel spreads them over both workers (SO_REUSEPORT); every (device, seq) that got
2.01 must reach the platform, through a worker killed with SIGKILL and restarted (its
outbox replayed) and through a SIGTERM that drains both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import dtlscerts
from conftest import BIN, BridgeProcess, Counting, Mosquitto, free_ports, wait_until
from loadgen import Load

pytestmark = pytest.mark.integration
DEVICES = [("Worker dev %d" % n, "wdev%d" % n) for n in range(40)]
STARTED = re.compile(r"Worker (\d+) started \(pid (\d+)\)")


def probe(port, path):
    """(status, body) of GET http://127.0.0.1:port/path; (0, reason) if nothing answers."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def samples(port, name):
    """{worker label: value} of metric ``name`` on the supervisor's metrics port."""
    status, text = probe(port, "/metrics")
    assert status == 200, text
    return {sample.labels.get("worker"): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}


class Workers(BridgeProcess):
    """The bridge with coap.workers: 2 and its metrics port."""

    def __init__(self, workdir, mqtt_port, **overrides):
        self.metrics_port = free_ports()
        overrides.setdefault("log_level", "info")
        super().__init__(workdir, mqtt_port, coap={"workers": 2},
                         metrics={"port": self.metrics_port}, **overrides)

    def start(self, wait_mqtt=True, new_session=False):
        """``new_session``: in a process group of its own, as a shell's job or a service."""
        before = min(self.starts(1), self.starts(2))  # a restart appends to the same log
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge", "--config",
             self.config], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=new_session)
        try:
            self.wait_started(before + 1)
            if wait_mqtt:
                self.wait_ready()
        except BaseException:
            self.stop()  # a failed start leaves no supervisor (and workers) running
            raise
        return self

    def started(self):
        """[(worker, pid)] of every start logged so far."""
        return [(int(w), int(p)) for w, p in STARTED.findall(self.read_log())]

    def starts(self, worker):
        return sum(1 for w, _ in self.started() if w == worker)

    def wait_started(self, times):
        def both():
            assert self.proc.poll() is None, self.read_log()
            return min(self.starts(1), self.starts(2)) >= times
        wait_until(both, 30, "both workers started %d times" % times)

    def wait_ready(self):
        wait_until(lambda: probe(self.metrics_port, "/readyz") == (200, "ready\n"), 30,
                   "every worker ready")

    def pid(self, worker):
        return [p for w, p in self.started() if w == worker][-1]


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(str(tmp_path)).start()
    yield mosquitto
    mosquitto.kill()


def workers(tmp_path, broker_port, **overrides):
    bridge = Workers(str(tmp_path), broker_port, **overrides)
    for name, token in DEVICES:
        bridge.add_device(name, token)
    return bridge


def delivered_all(platform, results, name):
    try:
        wait_until(lambda: not platform.missing(results.acked), 30, "every acknowledged uplink")
    finally:
        report = platform.report(name, results.acked, results.codes)
    assert report["lost"] == 0
    return report


def test_many_source_ports_reach_both_workers_and_everything_acknowledged_arrives(
        tmp_path, broker):
    platform = Counting(broker.port)
    bridge = workers(tmp_path, broker.port).start()
    try:
        ids = re.findall(r"client id (\S+)\)", bridge.read_log())
        assert len(set(ids)) == 2 and sorted(i[-3:] for i in ids) == ["-w1", "-w2"]
        load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.02).start()
        try:
            load.wait_acknowledged(400)  # however long a loaded machine takes
        finally:
            results = load.stop()
        report = delivered_all(platform, results, "40 devices on 2 workers")
        assert report["acknowledged"] >= 400
        acked = samples(bridge.metrics_port, "coapbridge_uplinks_acknowledged_total")
        # both workers served some of the 40 source ports (all on one: a chance of 2**-39)
        assert acked["1"] > 0 and acked["2"] > 0, acked
        assert acked["1"] + acked["2"] >= report["acknowledged"]  # a client may give up on one
        assert samples(bridge.metrics_port, "coapbridge_worker_up") == {"1": 1.0, "2": 1.0}
        assert {"outbox-w1.sqlite3", "outbox-w2.sqlite3"} <= set(os.listdir(bridge.data_dir))
        assert "outbox.sqlite3" not in os.listdir(bridge.data_dir)
    finally:
        bridge.stop()
        platform.close()


def test_a_worker_killed_with_sigkill_is_restarted_and_its_acknowledged_uplinks_arrive(
        tmp_path, broker):
    platform = Counting(broker.port)
    # the test reads the workers' pids from their "started" lines (info); that the
    # supervisor learns of each start at any log_level is tests/integration/test_log_output.py's
    bridge = workers(tmp_path, broker.port).start()
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    try:
        load.wait_acknowledged(200)
        # the worker to be killed had acknowledged uplinks of its own (not only worker 2)
        wait_until(lambda: samples(bridge.metrics_port,
                                   "coapbridge_uplinks_acknowledged_total").get("1", 0) > 0,
                   30, "worker 1's first 2.01")
        victim = bridge.pid(1)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: bridge.starts(1) >= 2, 30, "worker 1 restarted")
        assert bridge.pid(1) != victim and bridge.proc.poll() is None
        bridge.wait_ready()
        load.wait_acknowledged(150)  # through the restarted worker too
    finally:
        results = load.stop()
    try:
        delivered_all(platform, results, "worker 1 SIGKILLed and restarted")
        assert "Worker 1 ended (killed by signal 9); restarting it in 1.0 s" in bridge.read_log()
        assert samples(bridge.metrics_port, "coapbridge_worker_restarts_total") == {
            "1": 1.0, "2": 0.0}
        assert probe(bridge.metrics_port, "/readyz") == (200, "ready\n")
    finally:
        bridge.stop()
        platform.close()


def test_sigterm_drains_both_workers_and_the_next_start_delivers_the_rest(tmp_path, broker):
    platform = Counting(broker.port)
    bridge = workers(tmp_path, broker.port).start()
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    try:
        load.wait_acknowledged(300)
        bridge.proc.terminate()
        # twistd re-raises the signal after its orderly shutdown, so the status is SIGTERM's
        assert bridge.proc.wait(60) == -signal.SIGTERM
    finally:
        results = load.stop()
    log = bridge.read_log()
    assert "Stopping 2 workers" in log
    for worker in (1, 2):
        assert "[coapbridge.bridge#info worker=%d] Stopped" % worker in log
    assert "did not stop" not in log and "restarting" not in log
    bridge.proc = None
    bridge.start()  # whatever waited for a PUBACK at the stop is in the outboxes
    try:
        report = delivered_all(platform, results, "SIGTERM drained 2 workers")
        assert report["acknowledged"] >= 300
    finally:
        bridge.stop()
        platform.close()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_each_worker_once_and_drains_it(
        tmp_path, broker, number):
    """Ctrl-C, ``timeout`` and systemd signal every process: each worker gets the signal
    itself and then the supervisor's SIGTERM; the second must not disturb its stop."""
    platform = Counting(broker.port)
    bridge = workers(tmp_path, broker.port).start(new_session=True)
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.01).start()
    try:
        load.wait_acknowledged(300)
        os.killpg(bridge.proc.pid, number)
        assert bridge.proc.wait(60) == -number  # twistd ends by the signal it got
    finally:
        results = load.stop()
    log = bridge.read_log()
    assert "Traceback" not in log and "#critical" not in log, log
    assert "ReactorNotRunning" not in log and "did not stop" not in log, log
    for worker in (1, 2):
        # (the two signals may also arrive as one: the kernel keeps one pending SIGTERM)
        assert "[coapbridge.bridge#info worker=%d] Stopped" % worker in log, log
    assert "Worker 1 stopped" not in log and "Worker 2 stopped" not in log, log
    bridge.proc = None
    bridge.start()  # what waited for a PUBACK at the stop is in the outboxes
    try:
        delivered_all(platform, results, "%s to the process group" % signal.Signals(number).name)
    finally:
        bridge.stop()
        platform.close()


def test_readyz_aggregates_the_workers_and_json_lines_name_the_worker(tmp_path):
    broker = Mosquitto(str(tmp_path))  # its port chosen, not started yet
    bridge = workers(tmp_path, broker.port, log_format="json").start(wait_mqtt=False)
    try:
        # the workers store uplinks without the broker: ready, degraded worker by worker
        wait_until(lambda: probe(bridge.metrics_port, "/readyz") == (
            200, "ready; degraded: worker 1: mqtt not connected, "
                 "worker 2: mqtt not connected\n"), 20, "both workers degraded")
        assert probe(bridge.metrics_port, "/healthz") == (200, "ok\n")
        broker.start()
        wait_until(lambda: probe(bridge.metrics_port, "/readyz") == (200, "ready\n"), 20,
                   "readyz 200")
        lines = [json.loads(line) for line in bridge.read_log().splitlines()
                 if line.startswith("{")]
        connected = [line for line in lines if line["message"].startswith("Connected to MQTT")]
        assert sorted(line["worker"] for line in connected) == [1, 2]
        assert all(line["logger"] == "coapbridge.mqtt" for line in connected)
    finally:
        bridge.stop()
        broker.stop()


def test_workers_that_cannot_start_stop_everything_with_one_line(tmp_path):
    bridge = Workers(str(tmp_path), free_ports())
    bridge.registry.close()
    with open(os.path.join(bridge.data_dir, "registry.sqlite3"), "wb") as damaged:
        damaged.write(b"not an SQLite file" * 100)  # every worker refuses it
    done = subprocess.run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                           "--config", bridge.config], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"coapbridge: worker [12] cannot start: .*registry\.sqlite3 is damaged", last), \
        done.stderr
    assert "restarting" not in done.stdout


def test_a_data_dir_that_cannot_be_written_stops_the_supervisor_with_one_line(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    bridge = Workers(str(tmp_path), free_ports(), data_dir=str(not_a_dir / "data"))
    done = run_twistd(bridge.config, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("coapbridge: cannot open %s" % (not_a_dir / "data" / "bridge.lock")) \
        and "DATA_DIR" in line, line
    assert "Worker 1" not in done.stdout


def run_twistd(config, cwd):
    return subprocess.run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                           "--config", config], capture_output=True, text=True, timeout=60,
                          cwd=str(cwd))


def test_a_data_dir_in_use_by_a_bridge_of_another_worker_count_is_refused_both_ways(
        tmp_path, broker):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = BridgeProcess(str(tmp_path / "one"), broker.port, log_level="info")
    two = Workers(str(tmp_path / "two"), broker.port, data_dir=single.data_dir)
    single.start()
    holder = single.proc.pid
    try:
        done = run_twistd(two.config, tmp_path / "two")
    finally:
        single.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == ("coapbridge: DATA_DIR %s is in use by another bridge (pid %d, a single "
                    "process): stop it, or give this one its own data_dir (DATA_DIR)"
                    % (single.data_dir, holder)), line
    assert "Worker 1" not in done.stdout
    two.start()
    holder = two.proc.pid  # the supervisor holds DATA_DIR for its workers
    try:
        done = run_twistd(single.config, tmp_path / "one")
    finally:
        two.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == ("coapbridge: DATA_DIR %s is in use by another bridge (pid %d, 2 worker "
                    "processes): stop it, or give this one its own data_dir (DATA_DIR)"
                    % (single.data_dir, holder)), line
    assert "CoAP listening" not in done.stdout


def test_the_supervisor_refuses_a_coap_port_in_use_before_starting_workers(tmp_path):
    import socket
    bridge = Workers(str(tmp_path), free_ports())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", bridge.coap_port))
        done = subprocess.run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                               "--config", bridge.config], capture_output=True, text=True,
                              timeout=60, cwd=str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "coapbridge: cannot listen for CoAP on UDP 127.0.0.1 port %d" % bridge.coap_port)
    assert "Worker 1" not in done.stdout


def test_fewer_workers_deliver_what_the_old_workers_stored(tmp_path):
    broker = Mosquitto(str(tmp_path))  # down: the uplinks stay in the workers' outboxes
    bridge = workers(tmp_path, broker.port).start(wait_mqtt=False)
    load = Load(bridge.host, bridge.coap_port, DEVICES, interval=0.05).start()
    try:
        load.wait_acknowledged(100)
    finally:
        results = load.stop()
    bridge.stop()
    assert len(results.acked) >= 100
    broker.start()
    platform = Counting(broker.port)
    single = BridgeProcess(str(tmp_path), broker.port, log_level="info")  # COAP_WORKERS=1
    try:
        single.start()
        delivered_all(platform, results, "2 workers' outboxes taken over by 1 process")
        log = single.read_log()
        assert "outbox-w1.sqlite3 (the worker count changed)" in log
        assert "outbox-w2.sqlite3 (the worker count changed)" in log
        assert sorted(n for n in os.listdir(single.data_dir) if n.startswith("outbox")
                      and n.endswith(".sqlite3")) == ["outbox.sqlite3"]
    finally:
        single.stop()
        platform.close()
        broker.stop()


def test_coaps_devices_are_spread_over_the_workers_each_with_its_own_sessions(tmp_path, broker):
    """DTLS binds its port like CoAP's (SO_REUSEPORT): each PSK device's handshake and
    requests stay on the worker its source port hashes to."""
    import shutil
    openssl = shutil.which("coap-client-openssl")
    assert openssl, "libcoap3-bin's coap-client-openssl is missing (make test installs it)"
    ca = dtlscerts.ca()
    ca_file, _ = ca.write(str(tmp_path), "ca")
    cert, key = dtlscerts.issue("localhost", ca, dns="localhost").write(str(tmp_path), "bridge")
    dtls_port = free_ports()
    bridge = Workers(str(tmp_path), broker.port, dtls={
        "enabled": True, "cert_file": cert, "key_file": key, "ca_file": ca_file,
        "bind_port": dtls_port})
    devices = [("Psk worker %d" % n, "wpsk%d" % n, b"psk-key-%d" % n) for n in range(12)]
    for name, token, psk in devices:
        bridge.registry.add(name, token, "default", psk_key=psk)
    bridge.start()
    try:
        wait_until(lambda: bridge.read_log().count("CoAPs (DTLS) listening") >= 2, 30,
                   "DTLS listening in both workers")
        for name, token, psk in devices:  # a process each: a source port each
            done = subprocess.run(
                [openssl, "-v", "6", "-m", "post", "-k", psk.decode(), "-u", token,
                 "-e", '{"over": "coaps"}',
                 "coaps://127.0.0.1:%d/api/v1/telemetry" % dtls_port],
                capture_output=True, timeout=30)
            out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            assert re.search(r"c:2\.01", out), out
        acked = samples(bridge.metrics_port, "coapbridge_uplinks_acknowledged_total")
        assert acked["1"] + acked["2"] == len(devices), acked
        # both workers served some (all 12 on one worker: a chance of 2**-11)
        assert acked["1"] > 0 and acked["2"] > 0, acked
    finally:
        bridge.stop()
