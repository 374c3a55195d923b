"""coapbridge benchmarks: the bridge end to end against reference servers, in one run.

    python bench/run.py [--quick] [--only SCENARIO,...] [--server-python PYTHON]

The bridge (or the baseline server) runs pinned to CPU 0; the load generator,
mosquitto and the platform run on CPU 1. Results go to bench/results/
(results.json, results.md, results.png). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import dtlsrun  # noqa: E402
import loadgen  # noqa: E402
from saturation import (median_run, progress, saturate, saturate_server,  # noqa: E402,F401
                        summary, templates)
from procstat import cpu_seconds, family_cpu_seconds, free_port, rss_kib  # noqa: E402,F401

RESULTS = os.path.join(HERE, "results")
SERVER_CPU, LOAD_CPU = "0", "1"
PYPY_GC_NURSERY = "16M"  # unless set in the environment (see Run.spawn)


def wait_port(port: int, udp: bool = False, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if udp:
            return
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


class Run:
    def __init__(self, quick: bool, server_python: str):
        self.quick = quick
        self.python = server_python
        self.work = tempfile.mkdtemp(prefix="coapbridge-bench-")
        self.procs: List[subprocess.Popen] = []
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        self.duration = 3.0 if quick else 12.0
        self.rounds = 1 if quick else 5  # saturation runs per server, interleaved
        self.observers: Optional[int] = None

    def spawn(self, args: List[str], cpu: str, **kwargs: Any) -> subprocess.Popen:
        # every server (bridge and baselines alike) with the PyPy nursery docs/performance.md
        # recommends: at PyPy's default (the CPU's cache, 1 MiB here) its collector took
        # 38-42 % of the bridge's CPU in process; CPython ignores the variable
        env = dict(kwargs.pop("env", None) or os.environ)
        env.setdefault("PYPY_GC_NURSERY", PYPY_GC_NURSERY)
        proc = subprocess.Popen(["taskset", "-c", cpu] + args, env=env, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        shutil.rmtree(self.work, ignore_errors=True)

    def mosquitto(self) -> int:
        port = free_port()
        conf = os.path.join(self.work, "mosquitto-%d.conf" % port)
        user = "user root\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as handle:
            handle.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                         "max_inflight_messages 0\nmax_queued_messages 0\n%s" % (port, user))
        self.spawn([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf], LOAD_CPU,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def platform(self, port: int, mode: str, fw: Optional[dict] = None) -> subprocess.Popen:
        proc = self.spawn([sys.executable, os.path.join(HERE, "fakeplatform.py"), str(port), mode,
                           "0", json.dumps(fw or {})], LOAD_CPU,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def bridge(self, mqtt_port: int, devices: List[str], extra: Optional[dict] = None,
               types: Optional[Dict[str, str]] = None, cpu: str = SERVER_CPU,
               connections: int = 1, rows: Optional[List[Any]] = None) -> Any:
        """The bridge, with ``devices`` (token ``t`` + name) of type ``default`` or as
        ``types`` says, or the registry ``rows`` (``DeviceRow``) when given; on CPU set
        ``cpu``; ready once ``connections`` MQTT connections are up (one per worker)."""
        data = tempfile.mkdtemp(dir=self.work)
        from bridge.registry import Registry
        registry = Registry(os.path.join(data, "registry.sqlite3"))
        types = types or {}
        registry.import_rows(rows if rows is not None else
                             [(name, "t" + name, types.get(name, "default"))
                              for name in devices])
        registry.close()
        coap_port = free_port(socket.SOCK_DGRAM)
        config = {"coap": {"bind_address": "127.0.0.1", "bind_port": coap_port,
                           "max_observers": 1_000_000},
                  "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
                  "data_dir": data, "log_level": "warn", "metrics": {"port": 0},
                  "limits": {"device_rate": 0, "peer_rate": 0, "max_pending_per_peer": 1_000_000}}
        for key, value in (extra or {}).items():
            config.setdefault(key, {}).update(value)
        path = os.path.join(data, "bridge.yaml")
        with open(path, "w") as handle:
            json.dump(config, handle)
        twistd = os.path.join(os.path.dirname(self.python), "twistd")
        proc = self.spawn([twistd, "-n", "--pidfile=", "coapbridge", "--config", path],
                          cpu, stdout=open(os.path.join(data, "bridge.log"), "w"),
                          stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(os.path.join(data, "bridge.log")) as handle:
                if handle.read().count("Connected to MQTT broker") >= connections:
                    break
            time.sleep(0.05)
        return proc, coap_port

    def baseline(self, mode: str) -> Any:
        port = free_port(socket.SOCK_DGRAM)
        if mode == "libcoap":
            proc = self.spawn(["coap-server-notls", "-A", "127.0.0.1", "-p", str(port)],
                              SERVER_CPU, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        else:
            proc = self.spawn([self.python, os.path.join(HERE, "servers.py"), mode, str(port)],
                              SERVER_CPU, stdout=subprocess.PIPE, cwd=ROOT)
            proc.stdout.readline()
        return proc, port


def scenario_telemetry(run: Run, out: Dict[str, Any]) -> None:
    """Saturation of the bridge and of each baseline, in interleaved rounds (the median
    round counts: a noisy neighbour or a slow disk sync then spoils one round, not the
    answer); then the bridge at fixed shares of its saturation rate."""
    devices = ["dev%d" % n for n in range(200)]
    tpl = templates(devices)
    mqtt = run.mosquitto()
    counter = run.platform(mqtt, "count")
    proc, port = run.bridge(mqtt, devices)
    runs: Dict[str, List[Dict[str, Any]]] = {"stock": [], "engine": [], "libcoap": [],
                                             "bridge": []}
    for round_ in range(run.rounds):
        label = " (%d/%d)" % (round_ + 1, run.rounds) if run.rounds > 1 else ""
        # our engine last: its ratio to the bridge (a target) pairs runs next to each other
        for mode in ("stock", "libcoap", "engine"):
            base, base_port = run.baseline(mode)
            runs[mode].append(saturate_server("baseline " + mode + label, base.pid, base_port,
                                              tpl, run.duration))
            run.stop(base)
        runs["bridge"].append(saturate_server("bridge saturation" + label, proc.pid, port, tpl,
                                              run.duration))
    out["baselines"] = {mode: median_run(runs[mode]) for mode in ("stock", "engine", "libcoap")}
    out["broker_publish_rate"] = broker_rate(run)
    saturation = median_run(runs["bridge"])
    fixed_runs: Dict[int, List[Dict[str, Any]]] = {25: [], 50: [], 75: []}
    for round_ in range(run.rounds):
        label = " (%d/%d)" % (round_ + 1, run.rounds) if run.rounds > 1 else ""
        for share in fixed_runs:
            rate = saturation["rate"] * share / 100.0
            fixed_runs[share].append(summary(saturate(
                "bridge at %d%%%s" % (share, label), port, tpl, run.duration, sockets=32,
                window=16, rate=rate)))
    fixed = {share: median_run(rows, "p99_ms") for share, rows in fixed_runs.items()}
    acked = sum(r["codes"].get("2.01", 0) for r in runs["bridge"]) + \
        sum(f["codes"].get("2.01", 0) for rows in fixed_runs.values() for f in rows)
    delivered = delivered_count(counter, acked)
    out["bridge"] = {"saturation": saturation, "fixed": fixed, "acknowledged": acked,
                     "delivered": delivered, "rss_kib": rss_kib(proc.pid)}
    run.stop(proc)
    run.stop(counter)


def delivered_count(counter: subprocess.Popen, acked: int) -> int:
    """What the counting platform received, once it has ``acked`` (or after a minute)."""
    delivered = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        counter.stdin.write("count\n")
        counter.stdin.flush()
        delivered = int(counter.stdout.readline())
        if delivered >= acked:
            break
        time.sleep(0.5)
    return delivered


PROTOBUF_VALUES = {"temperature": 21.5, "humidity": 40.5}


def scenario_protobuf(run: Run, out: Dict[str, Any]) -> None:
    """Telemetry from PROTOBUF devices (ThingsBoard's default telemetry schema) against the
    same values from JSON devices, through one bridge, in interleaved rounds: the protobuf
    rate as a share of JSON's (target: at least 0.90 on CPython)."""
    from bridge.core.formats import protoschema
    from bridge.edge import protoc
    reading = protoc.message_class(protoschema.DEFAULTS[protoschema.TELEMETRY],
                                   protoschema.TELEMETRY)
    json_devices = ["dev%d" % n for n in range(200)]
    pb_devices = ["pb%d" % n for n in range(200)]
    tpl = {"json": templates(json_devices, json.dumps(PROTOBUF_VALUES,
                                                      separators=(",", ":")).encode()),
           "protobuf": templates(pb_devices, reading(**PROTOBUF_VALUES).SerializeToString())}
    mqtt = run.mosquitto()
    counter = run.platform(mqtt, "count")
    proc, port = run.bridge(mqtt, json_devices + pb_devices,
                            extra={"device_profiles": {"sensor": {
                                "transportPayloadType": "PROTOBUF"}}},
                            types={name: "sensor" for name in pb_devices})
    rounds = max(3, run.rounds)  # a ratio of two rates: never from one round only
    runs: Dict[str, List[Dict[str, Any]]] = {"json": [], "protobuf": []}
    for round_ in range(rounds):
        for kind in ("json", "protobuf"):
            runs[kind].append(saturate_server("%s telemetry (%d/%d)" % (kind, round_ + 1, rounds),
                                              proc.pid, port, tpl[kind], run.duration))
    acked = sum(r["codes"].get("2.01", 0) for rows in runs.values() for r in rows)
    rate_ratios = [p["rate"] / j["rate"] for j, p in zip(runs["json"], runs["protobuf"])
                   if j["rate"]]
    cpu_ratios_ = [j["cpu_us"] / p["cpu_us"] for j, p in zip(runs["json"], runs["protobuf"])
                   if p["cpu_us"]]
    out["protobuf"] = {"json": median_run(runs["json"]), "protobuf": median_run(runs["protobuf"]),
                       "rate_ratios": [round(r, 3) for r in rate_ratios],
                       "rate_ratio": round(statistics.median(rate_ratios), 3),
                       "cpu_ratios": [round(r, 3) for r in cpu_ratios_],
                       "cpu_ratio": round(statistics.median(cpu_ratios_), 3),
                       "payload_bytes": {kind: len(reading(**PROTOBUF_VALUES).SerializeToString())
                                         if kind == "protobuf" else
                                         len(json.dumps(PROTOBUF_VALUES, separators=(",", ":")))
                                         for kind in runs},
                       "acknowledged": acked, "delivered": delivered_count(counter, acked)}
    run.stop(proc)
    run.stop(counter)


def scenario_workers(run: Run, out: Dict[str, Any]) -> None:
    """COAP_WORKERS 1 against 2 in the same run, rounds interleaved: aggregate saturation
    rate and CPU time (supervisor and workers) per answered uplink. The bridges may use
    every CPU but the load generator's (on 2 CPUs: both, the second worker sharing CPU 1
    with the load generator, mosquitto and the platform); 64 source ports, so that the
    kernel's hash spreads them over the workers."""
    devices = ["dev%d" % n for n in range(200)]
    tpl = templates(devices)
    mqtt = run.mosquitto()
    counter = run.platform(mqtt, "count")
    metrics_port = free_port()
    cpus = os.cpu_count() or 2
    # every CPU but the load generator's where there are more than 2; here both
    server_cpus = "0,1" if cpus <= 2 else ",".join(
        str(n) for n in range(cpus) if str(n) != LOAD_CPU)
    bridges = {n: run.bridge(mqtt, devices, {"coap": {"workers": n}, "metrics": {
        "port": metrics_port if n == 2 else 0}}, cpu=server_cpus, connections=n)
        for n in (1, 2)}
    runs: Dict[int, List[Dict[str, Any]]] = {1: [], 2: []}
    for round_ in range(run.rounds):
        label = " (%d/%d)" % (round_ + 1, run.rounds) if run.rounds > 1 else ""
        for n, (proc, port) in bridges.items():
            before = family_cpu_seconds(proc.pid)
            result = summary(saturate("workers: %d%s" % (n, label), port, tpl, run.duration,
                                      sockets=64, window=4))
            result["cpu_us"] = round((family_cpu_seconds(proc.pid) - before)
                                     / max(1, result["answered"]) * 1e6, 1)
            runs[n].append(result)
    acked = sum(r["codes"].get("2.01", 0) for rows in runs.values() for r in rows)
    delivered = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        counter.stdin.write("count\n")
        counter.stdin.flush()
        delivered = int(counter.stdout.readline())
        if delivered >= acked:
            break
        time.sleep(0.5)
    medians = {n: median_run(rows) for n, rows in runs.items()}
    shares = worker_shares(metrics_port)
    ratios = [two["rate"] / one["rate"] for one, two in zip(runs[1], runs[2]) if one["rate"]]
    out["workers"] = {"1": medians[1], "2": medians[2], "acknowledged": acked,
                      "delivered": delivered,
                      "rate_ratios": [round(r, 2) for r in ratios],
                      "rate_ratio": round(statistics.median(ratios), 2) if ratios else 0.0,
                      "acknowledged_by_worker": shares}
    for proc, _ in bridges.values():
        run.stop(proc)
    run.stop(counter)


def worker_shares(port: int) -> Dict[str, float]:
    """Uplinks acknowledged by each worker, from the supervisor's metrics port."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as answer:
        text = answer.read().decode()
    return {sample.labels["worker"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "coapbridge_uplinks_acknowledged_total"}


def broker_rate(run: Run) -> Dict[str, Any]:
    mqtt = run.mosquitto()
    code = ("import time,paho.mqtt.client as m\n"
            "from paho.mqtt.enums import CallbackAPIVersion as V\n"
            "c=m.Client(V.VERSION2,client_id='bench-pub');c.max_inflight_messages_set(100)\n"
            "n=[0];c.on_publish=lambda *a:n.__setitem__(0,n[0]+1)\n"
            "c.connect('127.0.0.1',%d);c.loop_start();time.sleep(0.5)\n"
            "p=b'{\"dev0\":[{\"ts\":1700000000000,\"values\":{\"temperature\":21.5}}]}'\n"
            "end=time.time()+%f\n"
            "while time.time()<end:\n"
            "  if c._inflight_messages<100: c.publish('v1/gateway/telemetry',p,qos=1)\n"
            "  else: time.sleep(0.0005)\n"
            "print(n[0]/%f)\n" % (mqtt, run.duration, run.duration))
    proc = run.spawn([sys.executable, "-c", code], SERVER_CPU, stdout=subprocess.PIPE, text=True)
    progress("broker: one paho client", 0.0)
    rate = float(proc.communicate(timeout=run.duration + 30)[0].strip())
    progress("broker: one paho client", 1.0)
    return {"rate": round(rate)}


def scenario_observers(run: Run, out: Dict[str, Any]) -> None:
    count = run.observers or (3_000 if run.quick else 100_000)
    devices = ["obs%d" % n for n in range(count)]
    mqtt = run.mosquitto()
    answerer = run.platform(mqtt, "answer")
    proc, port = run.bridge(mqtt, devices)
    time.sleep(1.0)
    before = rss_kib(proc.pid)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    selector = selectors.DefaultSelector()
    for n, sock in enumerate(socks):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.connect(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ)
    registered, notified, sent = 0, 0, 0
    waiting: Dict[int, float] = {}  # device index -> when its registration was sent
    done = set()
    start = time.time()
    window = 256

    def register(n: int) -> None:
        body = loadgen.request_template(1, "/api/v1/t%s/attributes" % devices[n], b"",
                                        extra=[(6, b"")])
        header = struct.pack("!BBH", 0x50 | 4, 1, (n + int(time.time() * 1000)) & 0xFFFF)
        socks[n % 64].send(header + struct.pack("!I", n) + body)  # NON GET, token = n
        waiting[n] = time.time()

    while len(done) < count and time.time() - start < 900:
        while sent < count and len(waiting) < window:
            register(sent)
            sent += 1
        for key, _ in selector.select(0.05):
            while True:
                try:
                    data = key.fileobj.recv(2048)
                except BlockingIOError:
                    break
                if data[1] == 0x45 and data[0] & 0x0F == 4:
                    n = struct.unpack("!I", data[4:8])[0]
                    if waiting.pop(n, None) is not None:
                        done.add(n)
        now = time.time()
        for n in [n for n, t in waiting.items() if now - t > 2.0]:
            register(n)  # lost on the way: ask again (it replaces the relation, if any)
        registered = len(done)
        progress("observers: register %d" % count, registered / count)
    progress("observers: register %d" % count, 1.0)
    time.sleep(1.0)
    after = rss_kib(proc.pid)
    answerer.stdin.write("push %d\n" % count)
    answerer.stdin.flush()
    t0 = time.time()
    while notified < count and time.time() - t0 < 300:
        for key, _ in selector.select(0.05):
            while True:
                try:
                    data = key.fileobj.recv(2048)
                except BlockingIOError:
                    break
                if data[1] == 0x45:
                    notified += 1
        progress("observers: fan-out", notified / count)
    elapsed = time.time() - t0
    progress("observers: fan-out", 1.0)
    out["observers"] = {"devices": count, "registered": registered,
                        "rss_growth_kib": after - before,
                        "bytes_per_observer": round((after - before) * 1024 / max(1, registered)),
                        "notified": notified, "fanout_seconds": round(elapsed, 2),
                        "notifications_per_s": round(notified / elapsed) if elapsed else 0}
    for sock in socks:
        sock.close()
    run.stop(proc)
    run.stop(answerer)


def scenario_firmware(run: Run, out: Dict[str, Any]) -> None:
    downloaders = 10 if run.quick else 100
    package = os.urandom(1024 * 1024)
    folder = os.path.join(run.work, "packages", "bench")
    os.makedirs(folder)
    with open(os.path.join(folder, "1.0"), "wb") as handle:
        handle.write(package)
    import hashlib
    fw = {"fw_title": "bench", "fw_version": "1.0", "fw_size": len(package),
          "fw_checksum": hashlib.sha256(package).hexdigest(), "fw_checksum_algorithm": "SHA256"}
    devices = ["fw%d" % n for n in range(downloaders)] + ["dev%d" % n for n in range(50)]
    mqtt = run.mosquitto()
    answerer = run.platform(mqtt, "answer", fw)
    proc, port = run.bridge(mqtt, devices, {"ota": {"source": "directory",
                                                    "directory": os.path.join(run.work,
                                                                              "packages")}})
    socks = []
    selector = selectors.DefaultSelector()
    blocks = len(package) // 1024
    state = {}
    for n in range(downloaders):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ, n)
        socks.append(sock)
        state[n] = {"block": 0, "data": [], "mid": n * 1000, "sent": 0.0}

    def ask(n: int) -> None:
        s = state[n]
        s["mid"] = (s["mid"] + 1) & 0xFFFF
        block2 = (s["block"] << 4) | 6
        option = block2.to_bytes(max(1, (block2.bit_length() + 7) // 8), "big")
        body = loadgen.request_template(1, "/fw/tfw%d" % n, b"", extra=[(23, option)])
        socks[n].send(struct.pack("!BBHH", 0x42, 1, s["mid"], s["mid"]) + body)
        s["sent"] = time.time()

    telemetry_tpl = templates(["dev%d" % n for n in range(50)])
    import threading
    telemetry: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: telemetry.update(summary(loadgen.run(
        "127.0.0.1", port, telemetry_tpl, 30.0 if not run.quick else 10.0, sockets=8, window=2,
        rate=1000))), daemon=True)
    thread.start()
    start = time.time()
    for n in range(downloaders):
        ask(n)
    done = 0
    while done < downloaders and time.time() - start < 600:
        for key, _ in selector.select(0.05):
            n = key.data
            try:
                data = key.fileobj.recv(2048)
            except BlockingIOError:
                continue
            if data[1] == 0 or struct.unpack("!H", data[4:6])[0] != state[n]["mid"]:
                continue
            payload = data[data.index(b"\xff", 6) + 1:] if b"\xff" in data[6:] else b""
            state[n]["data"].append(payload)
            state[n]["block"] += 1
            if state[n]["block"] < blocks:
                ask(n)
            else:
                done += 1
        now = time.time()
        for n, s in state.items():  # retransmit a lost request
            if s["block"] < blocks and now - s["sent"] > 2.0:
                ask(n)
        progress("firmware: %d x 1 MiB" % downloaders, done / downloaders)
    elapsed = time.time() - start
    progress("firmware: %d x 1 MiB" % downloaders, 1.0)
    thread.join()
    intact = sum(1 for s in state.values() if b"".join(s["data"]) == package)
    out["firmware"] = {"devices": downloaders, "seconds": round(elapsed, 2), "intact": intact,
                       "throughput_kib_s": round(downloaders * 1024 / elapsed),
                       "telemetry_during": telemetry}
    for sock in socks:
        sock.close()
    run.stop(proc)
    run.stop(answerer)


def round_ratios(bridge: Dict[str, Any], rows: List[Tuple[str, Dict[str, Any]]]
                 ) -> List[Tuple[str, List[float]]]:
    """Per baseline, the bridge's rate over the baseline's in the same round."""
    return [(label, [b / r for b, r in zip(bridge["rounds"], row["rounds"]) if r])
            for label, row in rows if row.get("rounds")]


def cpu_ratios(bridge: Dict[str, Any], rows: List[Tuple[str, Dict[str, Any]]]
               ) -> List[Tuple[str, List[float]]]:
    """Per baseline, its CPU time per request over the bridge's in the same round: the
    share of the baseline's rate the bridge reaches when both have a core to themselves."""
    return [(label, [r / b for b, r in zip(bridge["cpu_rounds"], row["cpu_rounds"]) if b])
            for label, row in rows if row.get("cpu_rounds") and bridge.get("cpu_rounds")]


def protobuf_report(pb: Optional[Dict[str, Any]]) -> List[str]:
    if not pb:
        return []
    lines = ["", "## Protobuf telemetry (ThingsBoard's default schema) against JSON", "",
             "The same values (%s) from 200 PROTOBUF devices (%d-byte payload) and 200 JSON "
             "devices (%d bytes), through one bridge, %d interleaved rounds." % (
                 ", ".join("%s %s" % kv for kv in PROTOBUF_VALUES.items()),
                 pb["payload_bytes"]["protobuf"], pb["payload_bytes"]["json"],
                 len(pb["rate_ratios"])), "",
             "| Devices | req/s | CPU µs/req | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for kind in ("json", "protobuf"):
        row = pb[kind]
        lines.append("| %s | %d | %.1f | %.2f | %.2f |" % (
            kind, row["rate"], statistics.median(row["cpu_rounds"]), row["p50_ms"],
            row["p99_ms"]))
    lines += ["", "**Protobuf / JSON rate: %.2f** (round by round %s; target at least 0.90); "
              "by CPU time per request (JSON's µs / protobuf's): %.2f (%s). Acknowledged %d, "
              "the platform received %d." % (
                  pb["rate_ratio"], ", ".join("%.2f" % r for r in pb["rate_ratios"]),
                  pb["cpu_ratio"], ", ".join("%.2f" % r for r in pb["cpu_ratios"]),
                  pb["acknowledged"], pb["delivered"])]
    return lines


def write_report(out: Dict[str, Any], name: str = "results") -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as handle:
        json.dump(out, handle, indent=2)
    lines = ["# coapbridge benchmark results", "",
             "%s, %s %s, %d CPUs, %s mode, %s" % (out["when"], out["python"], out["python_version"],
                                                  os.cpu_count() or 0, out["mode"],
                                                  host_platform.machine()), ""]
    if "bridge" in out:
        lines += telemetry_lines(out)
    if "protobuf" in out:
        lines += protobuf_report(out["protobuf"])
    if "observers" in out:
        lines += observer_lines(out)
    if "firmware" in out:
        lines += firmware_lines(out)
    if "workers" in out:
        lines += workers_lines(out["workers"])
    lines += dtlsrun.report(out)
    with open(os.path.join(RESULTS, name + ".md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    if "bridge" in out:
        plot(out, name)


def telemetry_lines(out: Dict[str, Any]) -> List[str]:
    bridge = out["bridge"]["saturation"]["rate"]
    base = out["baselines"]
    lines = ["## Telemetry, one CoAP POST per uplink (bridge and baselines on one core)", "",
             "| Server | req/s | bridge / server | CPU µs/req | p50 ms | p99 ms | p99.9 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rows = [("coapbridge end to end (outbox, MQTT, PUBACK)", out["bridge"]["saturation"])]
    rows += [(label, base[key]) for label, key in (("txThings 0.3.0 stock, no work", "stock"),
                                                 ("coapbridge's CoAP engine, no work",
                                                  "engine"),
                                                 ("libcoap coap-server (C), 4.04", "libcoap"))]
    for label, row in rows:
        cpu = statistics.median(row["cpu_rounds"]) if row.get("cpu_rounds") else 0.0
        lines.append("| %s | %d | %.2f | %.1f | %.2f | %.2f | %.2f |" % (
            label, row["rate"], bridge / row["rate"] if row["rate"] else 0, cpu, row["p50_ms"],
            row["p99_ms"], row["p999_ms"]))
    lines += ["", "CPU µs/req: CPU time (user + system) of the server process per answered "
              "request, median of the rounds."]
    if len(out["bridge"]["saturation"].get("rounds", [])) > 1:
        lines += ["", "Saturation is the median of %d interleaved runs per server; every run "
                  "(req/s): %s." % (len(out["bridge"]["saturation"]["rounds"]), "; ".join(
                      "%s %s" % (label.split(",")[0].split(" (")[0],
                                 ", ".join(str(r) for r in row["rounds"]))
                      for label, row in rows))]
        lines += ["", "Bridge / server round by round (each bridge run against the baseline "
                  "runs just before it, so that a slow spell of the machine spoils both "
                  "sides of a ratio alike): %s." % "; ".join(
                      "%s %s (median %.2f)" % (label.split(",")[0].split(" (")[0],
                                               ", ".join("%.2f" % r for r in ratios),
                                               statistics.median(ratios))
                      for label, ratios in round_ratios(out["bridge"]["saturation"], rows[1:]))]
        by_cpu = cpu_ratios(out["bridge"]["saturation"], rows[1:])
        if by_cpu:
            lines += ["", "The same by CPU time per request (server's µs / bridge's µs, round "
                      "by round): %s." % "; ".join(
                          "%s %s (median %.2f)" % (label.split(",")[0].split(" (")[0],
                                                   ", ".join("%.2f" % r for r in ratios),
                                                   statistics.median(ratios))
                          for label, ratios in by_cpu)]
    lines += ["", "Broker: one paho client publishes %d QoS 1 messages/s."
              % out["broker_publish_rate"]["rate"], "",
              "Acknowledged %d uplinks, the platform received %d."
              % (out["bridge"]["acknowledged"], out["bridge"]["delivered"]), "",
              "| Bridge at a fixed rate | req/s | p50 ms | p99 ms | p99.9 ms |",
              "|---|---:|---:|---:|---:|"]
    for share, row in out["bridge"]["fixed"].items():
        lines.append("| %s%% of saturation | %d | %.2f | %.2f | %.2f |" % (
            share, row["rate"], row["p50_ms"], row["p99_ms"], row["p999_ms"]))
    if len(next(iter(out["bridge"]["fixed"].values())).get("rounds", [])) > 1:
        lines += ["", "Each fixed rate ran %d times (interleaved); the run with the median p99 "
                  "is shown. Every run's p99 (ms): %s." % (
                      len(next(iter(out["bridge"]["fixed"].values()))["rounds"]), "; ".join(
                          "%s%%: %s" % (share, ", ".join("%.2f" % p for p in row["rounds"]))
                          for share, row in out["bridge"]["fixed"].items()))]
    return lines


def observer_lines(out: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    obs = out["observers"]
    lines += ["", "## Observers", "",
              "%d devices observing /attributes (NON): %d registered, RSS +%d KiB, "
              "**%d bytes per observer**; one shared-attribute push per device reached %d "
              "observers in %.2f s (**%d notifications/s**)." % (
                  obs["devices"], obs["registered"], obs["rss_growth_kib"],
                  obs["bytes_per_observer"], obs["notified"], obs["fanout_seconds"],
                  obs["notifications_per_s"])]
    return lines


def firmware_lines(out: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    fw = out["firmware"]
    lines += ["", "## Firmware", "",
              "%d devices each downloaded a 1 MiB package (Block2, 1024-byte blocks) at once in "
              "%.2f s (%d KiB/s in total, %d intact) while 50 devices posted telemetry at up to "
              "1000/s (%d/s answered, p99 %.2f ms)." % (
                  fw["devices"], fw["seconds"], fw["throughput_kib_s"], fw["intact"],
                  fw["telemetry_during"].get("rate", 0), fw["telemetry_during"].get("p99_ms", 0))]
    return lines


def workers_lines(workers: Dict[str, Any]) -> List[str]:
    one, two = workers["1"], workers["2"]
    lines = ["", "## Worker processes (COAP_WORKERS), telemetry at saturation", "",
             "| Workers | req/s (all workers) | CPU µs/req (supervisor + workers) | p50 ms | "
             "p99 ms |", "|---|---:|---:|---:|---:|"]
    for n, row in (("1", one), ("2", two)):
        cpu = statistics.median(row["cpu_rounds"]) if row.get("cpu_rounds") else row["cpu_us"]
        lines.append("| %s | %d | %.1f | %.2f | %.2f |" % (n, row["rate"], cpu, row["p50_ms"],
                                                           row["p99_ms"]))
    lines += ["", "2 workers / 1 worker, round by round: %s (median %.2f; the design target, "
              "for a machine where the load generator has cores of its own, is at least "
              "0.8 x 2 = 1.6). Every run (req/s): 1 worker %s; 2 workers %s." % (
                  ", ".join("%.2f" % r for r in workers["rate_ratios"]), workers["rate_ratio"],
                  ", ".join(str(r) for r in one["rounds"]),
                  ", ".join(str(r) for r in two["rounds"])),
              "", "Acknowledged %d uplinks, the platform received %d; with 2 workers, worker "
              "by worker: %s." % (workers["acknowledged"], workers["delivered"], ", ".join(
                  "%s: %d" % item for item in sorted(
                      workers.get("acknowledged_by_worker", {}).items())))]
    return lines


def plot(out: Dict[str, Any], name: str) -> None:
    base = out["baselines"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["coapbridge\nend to end", "txThings\nstock", "coapbridge's\nCoAP engine",
             "libcoap\n(C)"]
    rates = [out["bridge"]["saturation"]["rate"], base["stock"]["rate"], base["engine"]["rate"],
             base["libcoap"]["rate"]]
    left.bar(names, rates, color=["#c0392b", "#7f8c8d", "#95a5a6", "#34495e"])
    left.set_ylabel("requests / s (one core)")
    left.set_title("Saturation throughput")
    shares = list(out["bridge"]["fixed"])
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        right.plot([int(s) for s in shares], [out["bridge"]["fixed"][s][key] for s in shares],
                   marker="o", label=label)
    right.set_xlabel("load, % of saturation")
    right.set_ylabel("latency, ms")
    right.set_title("coapbridge latency at fixed rates")
    right.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, name + ".png"), dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    parser.add_argument("--name", default="results",
                        help="file name for bench/results/NAME.{json,md,png}")
    parser.add_argument("--observers", type=int, default=None,
                        help="devices in the observer scenario (default 3,000 quick, 100,000 full)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios to run (telemetry, protobuf, observers, "
                        "firmware, workers, dtls; default: all; dtls measures its own "
                        "plain-UDP baseline)")
    parser.add_argument("--server-python", default=sys.executable,
                        help="interpreter (of a virtualenv) running the bridge and baselines")
    args = parser.parse_args()
    run = Run(args.quick, args.server_python)
    run.observers = args.observers
    version = subprocess.run([args.server_python, "-c",
                              "import platform;print(platform.python_implementation(),"
                              "platform.python_version())"],
                             capture_output=True, text=True).stdout.split()
    out: Dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "mode": "quick" if args.quick else "full",
                           "python": version[0], "python_version": version[1]}
    try:
        scenarios = {"telemetry": scenario_telemetry, "protobuf": scenario_protobuf,
                     "observers": scenario_observers,
                     "firmware": scenario_firmware, "workers": scenario_workers,
                     "dtls": dtlsrun.scenario_dtls}
        chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(scenarios)
        for scenario in chosen:
            scenarios[scenario](run, out)
    finally:
        run.close()
    write_report(out, args.name)
    print(open(os.path.join(RESULTS, args.name + ".md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
