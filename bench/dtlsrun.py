"""The DTLS section of ``bench/run.py``: handshakes, resumptions, telemetry over DTLS
against the plain-UDP bridge in the same process, and memory per idle session.

Load comes from ``dtlsload`` (pyOpenSSL clients over memory BIOs, one process on
the load core). On a 2-core machine that process may be slower than the bridge at
handshakes (the client's half of an ECDSA handshake costs about what the server's
does), so each figure carries the bridge's own CPU time per handshake or request,
from /proc/PID/stat: ``1e6 / cpu_us`` is what one core running only the bridge would
reach, the rate is what this load generator got.
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import time
from typing import Any, Dict, List

import dtlsload
import loadgen
import procstat
import saturation as bench

SESSIONS_QUICK, SESSIONS_FULL = 1000, 5000  # idle sessions for the memory figure


def _dtls_settings(certs: Dict[str, str], port: int) -> Dict[str, Any]:
    # no per-address handshake limit and room for every session: the bench measures
    # capacity, and its clients come from a few loopback addresses
    return {"dtls": {"enabled": True, "bind_address": "127.0.0.1", "bind_port": port,
                     "cert_file": certs["server"], "key_file": certs["server_key"],
                     "ca_file": certs["ca"], "handshake_rate": 0, "max_sessions": 1_000_000}}


def _rows(devices: List[str], psk_key: bytes, certs: Dict[str, str]) -> List[Any]:
    from bridge.registry import DeviceRow
    rows = [DeviceRow(name, "t" + name, "default", None, "t" + name, psk_key)
            for name in devices]
    with open(certs["device"]) as handle:
        rows.append(DeviceRow("certdev", None, "default", handle.read()))
    return rows


def _hs_summary(result: dtlsload.Result, cpu: float, elapsed: float) -> Dict[str, Any]:
    return {"rate": round(result.rate), "done": result.done, "lost": result.lost,
            "resumed": result.resumed, "cipher": result.cipher,
            "p50_ms": round(result.percentile(50) * 1000, 2),
            "p99_ms": round(result.percentile(99) * 1000, 2),
            "cpu_us": round(cpu / max(1, result.done) * 1e6, 1),
            "busy": round(cpu / elapsed, 2) if elapsed else 0.0}


def _handshakes(label: str, pid: int, port: int, context: dtlsload.ClientContext,
                duration: float, resume: bool = False) -> Dict[str, Any]:
    before, start = procstat.cpu_seconds(pid), time.time()
    result = dtlsload.handshakes("127.0.0.1", port, context, duration, concurrency=16,
                                 resume=resume, progress=lambda f: bench.progress(label, f))
    bench.progress(label, 1.0)
    return _hs_summary(result, procstat.cpu_seconds(pid) - before, time.time() - start)


def _telemetry(label: str, pid: int, clients: List[Any], selector: Any, tpl: List[bytes],
               duration: float) -> Dict[str, Any]:
    before, start = procstat.cpu_seconds(pid), time.time()
    result = dtlsload.telemetry(clients, selector, tpl, duration, window=4,
                                progress=lambda f: bench.progress(label, f))
    bench.progress(label, 1.0)
    used = procstat.cpu_seconds(pid) - before
    return {"rate": round(result.rate), "answered": result.done, "lost": result.lost,
            "p50_ms": round(result.percentile(50) * 1000, 2),
            "p99_ms": round(result.percentile(99) * 1000, 2),
            "p999_ms": round(result.percentile(99.9) * 1000, 2), "codes": result.codes,
            "cpu_us": round(used / max(1, result.done) * 1e6, 1),
            "busy": round(used / (time.time() - start), 2)}


def memory(run: Any, certs: Dict[str, str], psk_key: bytes, out: Dict[str, Any]) -> None:
    """RSS growth of a fresh bridge over N idle PSK sessions, then N ECDSA sessions with a
    client certificate, per session (each one's cache entry for resumption included)."""
    count = SESSIONS_QUICK if run.quick else SESSIONS_FULL
    devices = ["dev%d" % n for n in range(32)]
    mqtt = run.mosquitto()
    dport = procstat.free_port(socket.SOCK_DGRAM)
    proc, _ = run.bridge(mqtt, devices, _dtls_settings(certs, dport),
                         rows=_rows(devices, psk_key, certs))
    kinds = {"psk": dtlsload.ClientContext(psk=("tdev0", psk_key)),
             "ecdsa": dtlsload.ClientContext(cert=certs["device"], key=certs["device_key"])}
    kept = []
    for context in kinds.values():  # warm up: first-use allocations are not per session
        kept.append(dtlsload.connect("127.0.0.1", dport, context, 50))
    time.sleep(1.0)
    result: Dict[str, Any] = {"sessions": count}
    for kind, context in kinds.items():
        before = procstat.rss_kib(proc.pid)
        label = "dtls memory: %d %s sessions" % (count, kind)
        kept.append(dtlsload.connect("127.0.0.1", dport, context, count,
                                     progress=lambda f: bench.progress(label, f)))
        bench.progress(label, 1.0)
        time.sleep(1.5)
        growth = procstat.rss_kib(proc.pid) - before
        result[kind] = {"rss_growth_kib": growth, "kib_per_session": round(growth / count, 1)}
    result["rss_kib"] = procstat.rss_kib(proc.pid)
    out["memory"] = result
    for clients, selector in kept:
        for client in clients:
            client.close(selector)
    run.stop(proc)


def scenario_dtls(run: Any, out: Dict[str, Any]) -> None:
    certs = dtlsload.write_certificates(run.work)
    psk_key = os.urandom(16)
    result: Dict[str, Any] = {}
    memory(run, certs, psk_key, result)
    devices = ["dev%d" % n for n in range(32)]  # one per DTLS session
    tpl = bench.templates(devices)
    mqtt = run.mosquitto()
    counter = run.platform(mqtt, "count")
    dport = procstat.free_port(socket.SOCK_DGRAM)
    proc, port = run.bridge(mqtt, devices, _dtls_settings(certs, dport),
                            rows=_rows(devices, psk_key, certs))
    selector = selectors.DefaultSelector()
    clients: List[Any] = []
    contexts = [dtlsload.ClientContext(psk=("t" + name, psk_key)) for name in devices]
    for context in contexts:  # each session its device's PSK (identity = its token)
        clients += dtlsload.connect("127.0.0.1", dport, context, 1, selector=selector)[0]
    # a PSK device posts to /api/v1/telemetry (its session says who it is), or with its
    # token in the path (which must then be its own)
    tokenless = loadgen.request_template(2, "/api/v1/telemetry", b'{"temperature":21.5}')
    kinds = {"psk": dtlsload.ClientContext(psk=("tdev0", psk_key)),
             "ecdsa": dtlsload.ClientContext(cert=certs["device"], key=certs["device_key"])}
    runs: Dict[str, List[Dict[str, Any]]] = {"udp": [], "dtls": [], "dtls_token": [],
                                             "psk": [], "ecdsa": [], "resumed": []}
    for round_ in range(run.rounds):
        tag = " (%d/%d)" % (round_ + 1, run.rounds) if run.rounds > 1 else ""
        start = time.time()
        udp = bench.saturate_server("dtls: plain UDP bridge" + tag, proc.pid, port, tpl,
                                    run.duration)
        udp["busy"] = round(udp["cpu_us"] * udp["answered"] / 1e6 / (time.time() - start), 2)
        runs["udp"].append(udp)
        for kind, bodies in (("dtls", [tokenless] * len(clients)), ("dtls_token", tpl)):
            for client, body in zip(clients, bodies):
                client.template = body
            runs[kind].append(_telemetry("dtls: telemetry over DTLS%s%s" % (
                "" if kind == "dtls" else ", token", tag), proc.pid, clients, selector, tpl,
                run.duration))
        for kind in ("psk", "ecdsa"):
            runs[kind].append(_handshakes("dtls: %s handshakes%s" % (kind, tag), proc.pid,
                                          dport, kinds[kind], run.duration))
        runs["resumed"].append(_handshakes("dtls: resumptions" + tag, proc.pid, dport,
                                           kinds["ecdsa"], run.duration, resume=True))
    for kind in runs:
        result[kind] = bench.median_run(runs[kind])
    result["ratio_rounds"] = [round(d["rate"] / u["rate"], 3) if u["rate"] else 0.0
                              for u, d in zip(runs["udp"], runs["dtls"])]
    result["cpu_ratio_rounds"] = [round(u["cpu_us"] / d["cpu_us"], 3) if d["cpu_us"] else 0.0
                                  for u, d in zip(runs["udp"], runs["dtls"])]
    acked = sum(r["codes"].get("2.01", 0) for kind in ("udp", "dtls", "dtls_token")
                for r in runs[kind])
    delivered = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        counter.stdin.write("count\n")
        counter.stdin.flush()
        delivered = int(counter.stdout.readline())
        if delivered >= acked:
            break
        time.sleep(0.5)
    result["acknowledged"], result["delivered"] = acked, delivered
    for client in clients:
        client.close(selector)
    run.stop(proc)
    run.stop(counter)
    out["dtls"] = result


def report(out: Dict[str, Any]) -> List[str]:
    """The DTLS section of results.md."""
    d = out.get("dtls")
    if not d:
        return []
    mem = d["memory"]

    def spread(row: Dict[str, Any], key: str = "rounds") -> str:
        return ", ".join(str(r) for r in row.get(key, [])) if len(row.get(key, [])) > 1 else ""

    lines = ["", "## DTLS (CoAPs), the bridge on one core, the load generator on the other", "",
             "| Measure | rate/s | bridge CPU µs each | one core's worth (1e6/µs) | "
             "bridge busy | target | every round (rate) |", "|---|---:|---:|---:|---:|---|---|"]
    rows = [("Full handshakes, PSK (%s)" % d["psk"]["cipher"], d["psk"], "≥ 3,000/s"),
            ("Full handshakes, ECDSA P-256 + client certificate (%s)" % d["ecdsa"]["cipher"],
             d["ecdsa"], "≥ 1,000/s"),
            ("Resumptions (ECDSA sessions)", d["resumed"], ""),
            ("Telemetry over DTLS, end to end (PSK sessions, /api/v1/telemetry)", d["dtls"],
             "≥ 60 % of UDP"),
            ("Telemetry over DTLS, token in the path (the same sessions)", d["dtls_token"], ""),
            ("Telemetry over plain UDP, same bridge process", d["udp"], "")]
    for label, row, target in rows:
        cpu = statistics.median(row["cpu_rounds"]) if row.get("cpu_rounds") else row["cpu_us"]
        lines.append("| %s | %d | %.1f | %d | %.2f | %s | %s |" % (
            label, row["rate"], cpu, round(1e6 / cpu) if cpu else 0, row.get("busy", 0),
            target, spread(row)))
    ratios, cpu_ratios = d["ratio_rounds"], d["cpu_ratio_rounds"]
    lines += ["", "DTLS / plain UDP, round by round: by rate %s (median %.2f); by CPU time per "
              "request %s (median %.2f)." % (
                  ", ".join("%.2f" % r for r in ratios), statistics.median(ratios),
                  ", ".join("%.2f" % r for r in cpu_ratios), statistics.median(cpu_ratios)),
              "", "Answers (median run): over DTLS %s, over UDP %s. Telemetry acknowledged %d "
              "uplinks (UDP and DTLS), the platform received %d." % (
                  d["dtls"]["codes"], d["udp"]["codes"], d["acknowledged"], d["delivered"]),
              "", "Bridge busy: its CPU seconds per second of the run. Below 1, the bridge "
              "waited (for the load generator, or for the outbox's disk syncs): the rate is "
              "then this machine's, the CPU time per request the bridge's.",
              "", "Idle sessions, a fresh bridge: %d PSK sessions RSS +%d KiB (**%.1f KiB per "
              "session**), then %d ECDSA sessions with a client certificate +%d KiB (**%.1f KiB "
              "per session**); target ≤ 40 KB." % (
                  mem["sessions"], mem["psk"]["rss_growth_kib"], mem["psk"]["kib_per_session"],
                  mem["sessions"], mem["ecdsa"]["rss_growth_kib"],
                  mem["ecdsa"]["kib_per_session"])]
    return lines
