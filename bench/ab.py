"""A/B of two checkouts of coapbridge: CPU time per uplink at saturation, taking turns.

    python bench/ab.py BEFORE AFTER [--pairs 5] [--seconds 8] [--server-python PYTHON]

BEFORE and AFTER are directories holding a checkout (``git worktree add /tmp/old
<commit>`` makes one). Each pair runs both bridges, one after the other and in
alternating order, against the same broker, platform stand-in and load (the
telemetry saturation of ``run.py``: 200 devices, 32 sockets, 4 requests
outstanding each), and measures the CPU time (user + system) of the bridge
process per answered request: on this shared machine a rate varies by 10 to 25 %
from run to run, and interleaved pairs keep a slow spell from favouring one side.

Each bridge starts with its checkout first on ``PYTHONPATH``: twistd imports the
installed checkout whatever its working directory, so switching the directory
alone would run the same code twice. The tool checks which ``bridge`` package each
side imports before it measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import run as bench  # bench/run.py: this directory is on sys.path when run as a script


def imported_from(python: str, checkout: str) -> str:
    """The directory of the ``bridge`` package ``python`` imports with ``checkout`` first."""
    env = dict(os.environ, PYTHONPATH=checkout)
    return subprocess.run([python, "-c", "import os, bridge; "
                           "print(os.path.dirname(os.path.dirname(bridge.__file__)))"],
                          env=env, cwd="/", capture_output=True, text=True,
                          check=True).stdout.strip()


def measure(run: bench.Run, checkout: str, mqtt: int, devices: List[str], tpl: List[bytes],
            seconds: float, label: str) -> Dict[str, float]:
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = checkout  # for the bridge process only
    try:
        proc, port = run.bridge(mqtt, devices)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        time.sleep(1.0)
        before, start = bench.cpu_seconds(proc.pid), time.time()
        result = bench.summary(bench.saturate(label, port, tpl, seconds, sockets=32, window=4))
        used, elapsed = bench.cpu_seconds(proc.pid) - before, time.time() - start
    finally:
        run.stop(proc)
    if not result["answered"]:
        raise RuntimeError("the bridge of %s answered nothing" % checkout)
    return {"us_per_request": used / result["answered"] * 1e6, "rate": result["rate"],
            "busy": used / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--server-python", default=sys.executable,
                        help="interpreter (of a virtualenv) running the bridges")
    args = parser.parse_args()
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    for name, checkout in sides.items():
        found = imported_from(args.server_python, checkout)
        if os.path.realpath(found) != os.path.realpath(checkout):
            print("%s: %s imports bridge from %s, not from %s"
                  % (name, args.server_python, found, checkout), file=sys.stderr)
            return 2
    run = bench.Run(quick=True, server_python=args.server_python)
    devices = ["dev%d" % n for n in range(200)]
    tpl = bench.templates(devices)
    results: Dict[str, List[Dict[str, float]]] = {"before": [], "after": []}
    try:
        mqtt = run.mosquitto()
        run.platform(mqtt, "count")
        for pair in range(args.pairs):
            order = ["before", "after"] if pair % 2 == 0 else ["after", "before"]
            for name in order:
                results[name].append(measure(run, sides[name], mqtt, devices, tpl, args.seconds,
                                             "%s (%d/%d)" % (name, pair + 1, args.pairs)))
    finally:
        run.close()
    print("| pair | before µs/req | after µs/req | before req/s | after req/s |")
    print("|---:|---:|---:|---:|---:|")
    for pair, (old, new) in enumerate(zip(results["before"], results["after"]), 1):
        print("| %d | %.1f | %.1f | %d | %d |" % (pair, old["us_per_request"],
                                                 new["us_per_request"], old["rate"], new["rate"]))
    medians = {name: statistics.median(r["us_per_request"] for r in rows)
               for name, rows in results.items()}
    change = statistics.median(new["us_per_request"] / old["us_per_request"] - 1
                               for old, new in zip(results["before"], results["after"]))
    print("\nCPU per request, median: before %.1f µs, after %.1f µs; median change of a pair "
          "%+.1f %%" % (medians["before"], medians["after"], 100 * change))
    return 0


if __name__ == "__main__":
    sys.exit(main())
