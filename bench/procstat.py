"""What the benchmarks read of a process and ask of the machine: a free port, a process's
resident memory and CPU time (from /proc), shared by bench/run.py and bench/reliable.py."""

from __future__ import annotations

import os
import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family_cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` and of its children now running (a supervisor's workers)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            children = [int(child) for child in handle.read().split()]
    except OSError:
        children = []
    total = cpu_seconds(pid)
    for child in children:
        try:
            total += cpu_seconds(child)
        except OSError:
            pass  # ended meanwhile
    return total
