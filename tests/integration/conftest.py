"""Real parts for integration tests: mosquitto, the bridge under twistd, a paho platform."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import pgcluster
from bridge.registry import Registry
from bridge.registry_url import driver_available

BIN = os.path.dirname(sys.executable)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Ports for the test's servers (the bridge, mosquitto, proxies) are chosen below the kernel's
# ephemeral range. A port the kernel handed out for bind(("", 0)) and that was closed again
# went back to the pool every outgoing connection and every client socket draws from (the
# CoAP clients, the bridge's MQTT link, paho, another checkout's suite): under load one of
# them took it before the server bound it ("Address already in use" at a module's set-up, a
# late-started broker's port answering for a stranger). Below that range only a bind to that
# very number takes a port, and the suites of other checkouts on this machine are kept off the
# numbers handed out here by a record lock held until this process ends.
_PORTS_LOW = 10000
_PORTS_HIGH = max(_PORTS_LOW + 1000, _ephemeral_start())
_PORT_LOCKS = os.path.join(tempfile.gettempdir(), "coapbridge-test-ports.lock")
_given: set = set()
_locks: List[Any] = []  # the lock file, held open (its locks go with it)
_pick = random.Random()  # its own: pytest-randomly reseeds the global one for every test


def _reserve(port: int) -> bool:
    """Lock byte ``port`` of the shared lock file: no other process handing out ports here
    gets it while this one runs."""
    if not _locks:
        _locks.append(open(_PORT_LOCKS, "a+b"))
    try:
        fcntl.lockf(_locks[0], fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        return True
    except OSError:
        return False


def _bindable(port: int, kinds) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _port(kinds) -> int:
    for _ in range(10000):
        port = _pick.randrange(_PORTS_LOW, _PORTS_HIGH)
        if port in _given or not _bindable(port, kinds) or not _reserve(port):
            continue
        _given.add(port)  # never handed out twice by this process either
        return port
    raise RuntimeError("no free port in %d-%d" % (_PORTS_LOW, _PORTS_HIGH - 1))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port number free for ``kind``, outside the ephemeral range (see above)."""
    return _port([kind])


def free_ports() -> int:
    """A port number free for both TCP and UDP."""
    return _port([socket.SOCK_STREAM, socket.SOCK_DGRAM])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def probe(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:port/path; (None, reason) if it cannot
    connect."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return None, str(error)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    def __init__(self, workdir: str, port: Optional[int] = None):
        self.port = port or free_port()
        self.conf = os.path.join(workdir, "mosquitto-%d.conf" % self.port)
        self.log = os.path.join(workdir, "mosquitto-%d.log" % self.port)
        self.write_conf("")
        self.proc: Optional[subprocess.Popen] = None

    def write_conf(self, extra: str) -> None:
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's 0700 folders.
        user = "user root\n" if os.geteuid() == 0 else ""
        with open(self.conf, "w") as handle:
            handle.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n%s%s"
                         % (self.port, user, extra))

    def start(self) -> "Mosquitto":
        """Started, and listening itself: the port was free when ``free_port`` chose it, but
        another process (a test beside, another checkout's suite) may have taken it since
        (a broker started late, as test_faults' absent one, is open to that); then the
        port answers, but not this broker, and a test would talk to a stranger: say so."""
        offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)

        def listening() -> bool:
            with open(self.log, "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
            if self.proc.poll() is not None:  # type: ignore[union-attr]
                raise AssertionError("mosquitto could not listen on 127.0.0.1:%d (taken since "
                                     "free_port chose it?): %s" % (self.port, text.strip()))
            return " running" in text
        wait_until(listening, 10, "mosquitto to listen on %d" % self.port)
        wait_until(lambda: port_open(self.port), 10, "mosquitto on %d" % self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Platform:
    """A paho client playing ThingsBoard: records everything under v1/gateway/#."""

    def __init__(self, port: int):
        self.messages: List[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="platform-%d" % os.getpid(),
                                  protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("v1/gateway/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "platform could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def received(self, topic: Optional[str] = None) -> List[Dict[str, Any]]:
        with self.lock:
            return [json.loads(m.payload) for m in self.messages if topic in (None, m.topic)]

    def topics(self) -> List[str]:
        with self.lock:
            return [m.topic for m in self.messages]

    def wait_for(self, topic: str, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        def find() -> Any:
            for payload in self.received(topic):
                if predicate(payload):
                    return payload
            return None
        return wait_until(find, timeout, "a %s message" % topic)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Counting:
    """The platform: counts every telemetry seq per device (on a persistent connection)."""

    def __init__(self, port: int):
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="counting")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("v1/gateway/telemetry", qos=1)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        doc = json.loads(message.payload)
        with self.lock:
            for device, entries in doc.items():
                for entry in entries:
                    self.seen[(device, entry["values"]["seq"])] += 1

    def missing(self, acked) -> set:
        with self.lock:
            return {key for key in acked if key not in self.seen}

    def report(self, name: str, acked, codes) -> dict:
        with self.lock:
            delivered = sum(1 for key in acked if key in self.seen)
            duplicated = sum(count - 1 for key, count in self.seen.items() if count > 1)
        result = {"test": name, "acknowledged": len(acked), "delivered": delivered,
                  "duplicated": duplicated, "lost": len(acked) - delivered, "codes": dict(codes)}
        print("RESULT " + json.dumps(result))
        return result

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class BridgeProcess:
    """``twistd -n coapbridge`` with its own config, data dir and ports."""

    def __init__(self, workdir: str, mqtt_port: int, protocol: str = "5",
                 bind_address: str = "127.0.0.1", **overrides: Any):
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.coap_port = free_ports()
        self.host = "::1" if bind_address in ("::", "::1") else "127.0.0.1"
        self.config = os.path.join(workdir, "bridge.yaml")
        self.log = os.path.join(workdir, "bridge.log")
        mqtt = {"host": "127.0.0.1", "port": mqtt_port, "protocol": protocol,
                "reconnect_min_delay": 0.2, "reconnect_max_delay": 1.0, "puback_timeout": 3,
                "keepalive": 5}
        mqtt.update(overrides.pop("mqtt", {}))
        coap = {"bind_address": bind_address, "bind_port": self.coap_port}
        coap.update(overrides.pop("coap", {}))
        # The request limits are the shipped defaults (conf/coapbridge.yaml); a test about
        # a limit passes its own (limits={...}) and says why.
        config = {"coap": coap, "mqtt": mqtt, "data_dir": self.data_dir, "log_level": "debug",
                  "metrics": {"port": 0}}
        config.update(overrides)
        with open(self.config, "w") as handle:
            json.dump(config, handle)  # JSON is YAML
        self.registry = Registry(os.path.join(self.data_dir, "registry.sqlite3"))
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "coap://%s:%d" % (host, self.coap_port)

    def add_device(self, name: str, token: str, device_type: str = "default") -> None:
        self.registry.add(name, token, device_type)

    def start(self, wait_mqtt: bool = True, env: Optional[Dict[str, str]] = None,
              listening: Optional[Callable[[], bool]] = None,
              prefix: Optional[List[str]] = None) -> "BridgeProcess":
        """``env``: more environment; ``listening``: what says the bridge listens (default:
        its log line; a test whose log level hides it gives another); ``prefix``: a
        command that runs twistd (``unshare ...``)."""
        self.proc = subprocess.Popen(
            (prefix or []) + [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                              "--config", self.config],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {})), cwd=self.workdir)
        listening = listening or (lambda: "CoAP listening" in self.read_log())
        # PyPy takes about three times CPython's start-up time (imports before its JIT
        # warms up): 6 s with the machine shared, so the wait allows for much more
        wait_until(lambda: listening() or self.proc.poll() is not None,
                   60, "the bridge to listen")
        try:
            assert self.proc.poll() is None, self.read_log()
            if wait_mqtt:
                self.wait_connected(1)
        except BaseException:
            # a fixture whose set-up fails gets no teardown: leave no bridge running behind it
            self.stop()
            raise
        return self

    def connected_count(self) -> int:
        return self.read_log().count("Connected to MQTT broker")

    def wait_connected(self, count: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.connected_count() >= count, timeout,
                   "MQTT connection #%d" % count)

    def read_log(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.registry.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    mosquitto = Mosquitto(str(tmp_path_factory.mktemp("broker"))).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def platform(broker: Mosquitto):
    client = Platform(broker.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def bridge(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory):
    process = BridgeProcess(str(tmp_path_factory.mktemp("bridge")), broker.port,
                            mqtt={"max_packet_size": 20000})
    process.add_device("Dev A", "tokenA", "thermostat")
    process.add_device("Dev B", "tokenB")
    process.start()
    yield process
    process.stop()


# -- a private PostgreSQL server (tests/pgcluster.py), for the shared registry -------------

@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL server for the whole run, torn down at its end; skipped
    (saying why) only where PostgreSQL is not installed."""
    if not driver_available():
        pytest.skip("psycopg is not installed for this interpreter (setup.cfg installs it on "
                    "CPython only: it does not run on PyPy 7.3.11)")
    bin_dir = pgcluster.bindir()
    if bin_dir is None:
        pytest.skip("PostgreSQL not found (no initdb/pg_ctl in /usr/lib/postgresql/*/bin, "
                    "PG_BINDIR or PATH): install Debian's postgresql package "
                    "(scripts/install.sh system --test)")
    cluster = pgcluster.Cluster(bin_dir)
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(postgres):
    """The URL (with password) of a fresh, empty database on the session's server."""
    return postgres.create_database()


# -- tests that take minutes (marked ``long``) ------------------------------------------

def pytest_collection_modifyitems(config, items):
    """``long`` tests (minutes of wall time, mostly waiting: #24's 30 s x 10 cycles
    done-when run) run when RUN_LONG_TESTS=1: `make test` (the whole suite) runs them so
    in a pytest of their own beside the rest (scripts/test.sh: after it they would double
    its wall time, the suite taking 4 to 8 minutes and the 30 s x 10 run alone 5), `make
    test-long` alone. Any other pytest skips them, saying so."""
    if os.environ.get("RUN_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="takes minutes: make test runs it beside the suite "
                                   "(scripts/test.sh), make test-long alone")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
