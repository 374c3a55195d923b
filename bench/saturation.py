"""Saturation runs and their summaries, shared by bench/run.py and bench/dtlsrun.py (and
bench/ab.py, through run): a module of their own so that run.py and dtlsrun.py do not
import each other (tests/core/test_bars.py finds no import cycle in bench/)."""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, List

import loadgen
from procstat import cpu_seconds


_last_draw = [0.0]


def progress(label: str, fraction: float) -> None:
    now = time.time()
    if fraction < 1.0 and now - _last_draw[0] < 0.25:
        return
    _last_draw[0] = now
    width = 30
    done = int(width * min(1.0, fraction))
    sys.stderr.write("\r%-34s [%s%s] %3d%%" % (label[:34], "#" * done, "." * (width - done),
                                               int(100 * min(1.0, fraction))))
    sys.stderr.flush()
    if fraction >= 1.0:
        sys.stderr.write("\n")


def templates(devices: List[str], payload: bytes = b'{"temperature":21.5}') -> List[bytes]:
    return [loadgen.request_template(2, "/api/v1/t%s/telemetry" % d, payload)
            for d in devices]


def saturate(label: str, port: int, tpl: List[bytes], duration: float, **kw: Any) -> Any:
    result = loadgen.run("127.0.0.1", port, tpl, duration, progress=lambda f: progress(label, f),
                         **kw)
    progress(label, 1.0)
    return result


def summary(result: Any) -> Dict[str, Any]:
    return {"rate": round(result.rate), "answered": result.answered, "lost": result.lost,
            "p50_ms": round(result.percentile(50) * 1000, 2),
            "p99_ms": round(result.percentile(99) * 1000, 2),
            "p999_ms": round(result.percentile(99.9) * 1000, 2),
            "codes": dict(result.codes)}


def saturate_server(label: str, pid: int, port: int, tpl: List[bytes], duration: float
                    ) -> Dict[str, Any]:
    """``summary`` of a saturation run, with the CPU time the server process ``pid`` used
    per answered request (``cpu_us``): steadier than a rate on a shared machine, where a
    neighbour's load slows the server and the load generator alike."""
    before = cpu_seconds(pid)
    result = summary(saturate(label, port, tpl, duration, sockets=32, window=4))
    result["cpu_us"] = round((cpu_seconds(pid) - before) / max(1, result["answered"]) * 1e6, 1)
    return result


def median_run(runs: List[Dict[str, Any]], key: str = "rate") -> Dict[str, Any]:
    """The run with the median ``key``, with every run's ``key`` in ``rounds`` (and every
    run's CPU time per request in ``cpu_rounds``, where measured)."""
    chosen = dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])
    chosen["rounds"] = [r[key] for r in runs]
    if all("cpu_us" in r for r in runs):
        chosen["cpu_rounds"] = [r["cpu_us"] for r in runs]
    return chosen
