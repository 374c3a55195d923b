"""A sleeping device's radio, for the power-saving tests: a UDP relay between the device's
CoAP clients (libcoap's, which never sleep) and the bridge.

Everything the device's clients send goes to the bridge, and turns the radio on; what the
bridge sends back reaches the device only while its radio is on: within ``window`` seconds
after the last datagram the device sent (a request, or an ACK of a notification: what
ThingsBoard, and the bridge, count as hearing from the device), plus ``slack`` seconds (the
bridge starts its window when the datagram reaches it, a little after the relay saw it, and
its answer takes a little to come back: under load, a few hundred ms). What comes while the
radio is off is dropped, as a sleeping modem drops it, and kept in ``dropped``: a bridge
that holds a sleeping device's downlinks, as ThingsBoard does, never has one dropped, and
so never retransmits one either (the client never saw it, so it never acknowledged it).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

Address = Tuple[str, int]


class Radio:
    def __init__(self, target: Address, window: float, slack: float = 1.0):
        self.target = target
        self.window, self.slack = window, slack
        self.listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listen.bind(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self.last: Optional[float] = None  # when the device last sent (time.monotonic())
        self.delivered = 0  # datagrams from the bridge the device heard
        # (seconds since the device last sent, the datagram) for each one it did not hear
        self.dropped: List[Tuple[float, bytes]] = []
        self._upstream: Dict[Address, socket.socket] = {}  # a client -> its socket to the bridge
        self._client: Dict[socket.socket, Address] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listen, selectors.EVENT_READ)
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return "coap://127.0.0.1:%d%s" % (self.port, path)

    def _run(self) -> None:
        while not self._closing:
            for key, _ in self._selector.select(0.2):
                sock = key.fileobj
                try:
                    data, source = sock.recvfrom(65536)  # type: ignore[union-attr]
                except OSError:
                    continue  # an ICMP error for a client gone
                if sock is self.listen:
                    self._from_device(data, source)
                else:
                    self._from_bridge(sock, data)  # type: ignore[arg-type]

    def _from_device(self, data: bytes, client: Address) -> None:
        self.last = time.monotonic()
        upstream = self._upstream.get(client)
        if upstream is None:
            upstream = self._upstream[client] = socket.socket(socket.AF_INET,
                                                              socket.SOCK_DGRAM)
            upstream.bind(("127.0.0.1", 0))
            self._client[upstream] = client
            self._selector.register(upstream, selectors.EVENT_READ)
        upstream.sendto(data, self.target)

    def _from_bridge(self, upstream: socket.socket, data: bytes) -> None:
        since = time.monotonic() - self.last if self.last is not None else float("inf")
        if since > self.window + self.slack:
            self.dropped.append((since, data))
            return
        self.delivered += 1
        self.listen.sendto(data, self._client[upstream])

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        for sock in [self.listen, *self._upstream.values()]:
            sock.close()
        self._selector.close()
