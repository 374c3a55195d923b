"""A small CoAP load generator for tests: devices posting numbered telemetry over raw UDP.

Each device runs in its own thread with its own socket and sends CON POSTs
``{"seq": n}`` one after another, retransmitting like a real CoAP client
(same message ID, doubling timeout) until it gets an answer or gives up.
``acked`` holds every (device, seq) that got 2.01: what must reach the platform.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import threading
import time
from typing import Dict, List, Set, Tuple

import coapraw as raw


class DeviceLoad(threading.Thread):
    def __init__(self, host: str, port: int, name: str, token: str, interval: float,
                 stop: threading.Event, results: "LoadResults"):
        super().__init__(daemon=True)
        self.addr = (host, port)
        self.name, self.token, self.interval = name, token, interval
        self.stop_event, self.results = stop, results
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.mid = random.randrange(65536)

    def run(self) -> None:
        seq = 0
        path = "/api/v1/%s/telemetry" % self.token
        while not self.stop_event.is_set():
            seq += 1
            self.mid = (self.mid + 1) % 65536
            token = seq.to_bytes(4, "big")
            msg = raw.request(raw.POST, path, json.dumps({"seq": seq}).encode(), mid=self.mid,
                              token=token)
            code = self._exchange(msg)
            self.results.record(self.name, seq, code)
            time.sleep(self.interval)
        self.sock.close()

    def _exchange(self, msg: raw.Msg) -> str:
        data = raw.encode(msg)
        timeout = 0.5
        for _ in range(5):
            self.sock.sendto(data, self.addr)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    reply = raw.decode(self.sock.recvfrom(70000)[0])
                except (socket.timeout, ConnectionRefusedError):
                    continue
                if reply.mtype == raw.CON:
                    self.sock.sendto(raw.encode(raw.Msg(raw.ACK, 0, reply.mid)), self.addr)
                if reply.token == msg.token and reply.code != 0:
                    return reply.code_str
            timeout *= 2
        return "timeout"


class LoadResults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Set[Tuple[str, int]] = set()
        self.codes: Dict[str, int] = collections.Counter()

    def record(self, device: str, seq: int, code: str) -> None:
        with self.lock:
            self.codes[code] += 1
            if code == "2.01":
                self.acked.add((device, seq))


class Load:
    def __init__(self, host: str, port: int, devices: List[Tuple[str, str]], interval: float):
        self.stop_event = threading.Event()
        self.results = LoadResults()
        self.threads = [DeviceLoad(host, port, name, token, interval, self.stop_event, self.results)
                        for name, token in devices]

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def acknowledged(self) -> int:
        """How many uplinks got 2.01 so far (while the load runs)."""
        with self.results.lock:
            return len(self.results.acked)

    def wait_acknowledged(self, more: int, timeout: float = 60.0) -> None:
        """Wait for ``more`` further 2.01s: a phase of a test lasts until it carried data,
        not a fixed time, so a loaded machine makes it slower, not weaker."""
        target = self.acknowledged() + more
        deadline = time.monotonic() + timeout
        while self.acknowledged() < target:
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %d acknowledged uplinks (have %d)"
                                     % (target, self.acknowledged()))
            time.sleep(0.05)

    def stop(self) -> LoadResults:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)
        return self.results
