"""The DTLS section of ``bench/run.py``: CoAPs against the plain-UDP bridge in the same run.

* Full handshakes (PSK; ECDSA P-256 with a client certificate) and resumed ones, each
  from a new socket with its cookie round trip and one request: the rate the load
  generator reached, and the bridge's CPU time per handshake, whose inverse is the
  rate one core of the bridge sustains (the load generator runs OpenSSL too, on one
  core of its own, and is the slower side for PSK).
* Telemetry over established sessions (32 PSK sessions, 4 CON POSTs outstanding each,
  outbox and PUBACK as always) against the same bridge's plain UDP port with the same
  load shape, taking turns: the ratio of rates and of CPU time per request.
* Memory per idle session: the bridge's RSS before and after 2,000 sessions that each
  made one request and then stay open.

Targets (issue #14, one core, CPython): end to end at least 60 % of plain UDP, at least
1,000 ECDSA and 3,000 PSK full handshakes/s, at most 40 KB per idle session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

import run as bench  # bench/run.py (on sys.path: this directory)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(os.path.dirname(HERE), "tests"))  # after bench/: its loadgen

PSK_KEY = b"coapbridge bench psk"
IDLE_SESSIONS = 2000


def _certificates(directory: str) -> Dict[str, str]:
    import dtlscerts
    ca = dtlscerts.ca()
    server = dtlscerts.issue("localhost", ca)
    device = dtlscerts.issue("bench-device", ca)
    cert, key = server.write(directory, "bridge")
    dcert, dkey = device.write(directory, "device")
    ca_file = os.path.join(directory, "ca.pem")
    with open(ca_file, "wb") as handle:
        handle.write(ca.pem())
    return {"cert": cert, "key": key, "ca": ca_file, "device_cert": dcert, "device_key": dkey}


def _load(run: bench.Run, args: List[str], timeout: float) -> Dict[str, Any]:
    proc = run.spawn([sys.executable, os.path.join(HERE, "dtlsload.py")] + args, bench.LOAD_CPU,
                     stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def _measured(run: bench.Run, pid: int, args: List[str], label: str,
              count_key: str) -> Dict[str, Any]:
    bench.progress(label, 0.0)
    before = bench.cpu_seconds(pid)
    result = _load(run, args, run.duration + 60)
    used = bench.cpu_seconds(pid) - before
    bench.progress(label, 1.0)
    count = max(1, result[count_key])
    result["cpu_us"] = round(used / count * 1e6, 1)
    result["per_core"] = round(count / used) if used else 0
    return result


def scenario_dtls(run: bench.Run, out: Dict[str, Any]) -> None:
    devices = ["dev%d" % n for n in range(200)]
    tokens = ["t" + name for name in devices]
    pki = _certificates(run.work)
    mqtt = run.mosquitto()
    counter = run.platform(mqtt, "count")
    dtls_port = bench.free_port(bench.socket.SOCK_DGRAM)
    proc, coap_port = run.bridge(mqtt, devices, {"dtls": {
        "enabled": True, "bind_address": "127.0.0.1", "bind_port": dtls_port,
        "cert_file": pki["cert"], "key_file": pki["key"], "ca_file": pki["ca"],
        "handshake_rate": 0, "max_sessions": 100000}}, psk_key=PSK_KEY)
    seconds = str(run.duration)
    result: Dict[str, Any] = {}
    try:
        result["psk_full"] = _measured(run, proc.pid, ["handshakes", str(dtls_port), seconds,
                                                       "16", "psk"],
                                       "DTLS PSK handshakes", "handshakes")
        result["ecdsa_full"] = _measured(run, proc.pid, [
            "handshakes", str(dtls_port), seconds, "16", "ecdsa", pki["device_cert"],
            pki["device_key"]], "DTLS ECDSA handshakes", "handshakes")
        result["psk_resumed"] = _measured(run, proc.pid, [
            "handshakes", str(dtls_port), seconds, "16", "psk", "resume"],
            "DTLS PSK resumptions", "handshakes")
        result["ecdsa_resumed"] = _measured(run, proc.pid, [
            "handshakes", str(dtls_port), seconds, "16", "ecdsa", "resume",
            pki["device_cert"], pki["device_key"]], "DTLS ECDSA resumptions", "handshakes")
        tpl = bench.templates(devices)
        plain_runs, dtls_runs = [], []
        for round_ in range(run.rounds):
            label = " (%d/%d)" % (round_ + 1, run.rounds) if run.rounds > 1 else ""
            plain_runs.append(bench.saturate_server("plain UDP" + label, proc.pid, coap_port,
                                                    tpl, run.duration))
            dtls_runs.append(_measured(run, proc.pid, [
                "telemetry", str(dtls_port), seconds, "32", "4"] + tokens,
                "DTLS telemetry" + label, "answered"))
        plain = bench.median_run(plain_runs)
        dtls = bench.median_run(dtls_runs)
        dtls["cpu_rounds"] = [r["cpu_us"] for r in dtls_runs]
        result["telemetry"] = {"plain": plain, "dtls": dtls,
                               "rate_ratio": round(dtls["rate"] / plain["rate"], 3)
                               if plain["rate"] else 0,
                               "cpu_ratio": round(plain["cpu_us"] / dtls["cpu_us"], 3)
                               if dtls.get("cpu_us") else 0}
        result["idle"] = _idle(run, proc.pid, dtls_port)
    finally:
        run.stop(proc)
        run.stop(counter)
    out["dtls"] = result


def _idle(run: bench.Run, pid: int, port: int) -> Dict[str, Any]:
    time.sleep(1.0)
    before = bench.rss_kib(pid)
    bench.progress("DTLS idle sessions", 0.0)
    load = run.spawn([sys.executable, os.path.join(HERE, "dtlsload.py"), "idle", str(port),
                      str(IDLE_SESSIONS), "tdev0"], bench.LOAD_CPU,
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    opened = json.loads(load.stdout.readline())
    time.sleep(1.0)
    after = bench.rss_kib(pid)
    load.stdin.write("\n")
    load.stdin.flush()
    load.wait(30)
    bench.progress("DTLS idle sessions", 1.0)
    sessions = max(1, opened["sessions"])
    return {"sessions": opened["sessions"], "rss_growth_kib": after - before,
            "kib_per_session": round((after - before) / sessions, 1)}


def lines(d: Dict[str, Any]) -> List[str]:
    """The DTLS section of results.md."""
    tel = d["telemetry"]
    rows = ["", "## CoAPs (DTLS 1.2)", "",
            "| Handshakes, each from a new socket (cookie exchange, handshake, one GET) | "
            "reached /s | bridge CPU µs each | per bridge core /s | target |",
            "|---|---:|---:|---:|---:|"]
    for key, label, target in (("psk_full", "full PSK (TLS_PSK_WITH_AES_128_CCM_8)", "3,000"),
                               ("ecdsa_full", "full ECDSA P-256 (ECDHE-ECDSA-AES128-GCM), client certificate", "1,000"),
                               ("psk_resumed", "resumed PSK", ""),
                               ("ecdsa_resumed", "resumed ECDSA", "")):
        row = d[key]
        rows.append("| %s | %d | %.0f | %d | %s |" % (label, row["rate"], row["cpu_us"],
                                                      row["per_core"], target))
    rows += ["", "| Telemetry, 32 sessions/sockets, 4 CON POSTs outstanding each | req/s | "
             "bridge CPU µs/req |", "|---|---:|---:|",
             "| plain UDP (same bridge, same run) | %d | %.1f |" % (
                 tel["plain"]["rate"], tel["plain"]["cpu_us"]),
             "| over DTLS sessions | %d | %.1f |" % (tel["dtls"]["rate"], tel["dtls"]["cpu_us"]),
             "", "DTLS / plain UDP: **%.2f** by rate, **%.2f** by CPU time per request "
             "(target 0.60)." % (tel["rate_ratio"], tel["cpu_ratio"]),
             "", "Idle sessions: %d open, bridge RSS +%d KiB, **%.1f KiB per session** "
             "(target 40 KB)." % (d["idle"]["sessions"], d["idle"]["rss_growth_kib"],
                                  d["idle"]["kib_per_session"])]
    return rows
