"""A harness for the sans-IO datagram message layer: datagrams and times in, the layer's
events out, decoded with the tests' own codec (coapraw). No reactor, no sockets."""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

import coapraw as raw
from bridge.coap.datagram import DatagramSettings, MessageLayer
from bridge.coap.exchange import Answer, Incoming, Notified, Transmit
from bridge.coap.message import make_response

PEER = ("127.0.0.1", 40000)


class Log:
    """Collects what the layer logs (it logs at debug and info only)."""

    def __init__(self) -> None:
        self.lines: List[Tuple[str, str, dict]] = []

    def debug(self, text: str, **fields: Any) -> None:
        self.lines.append(("debug", text, fields))

    def info(self, text: str, **fields: Any) -> None:
        self.lines.append(("info", text, fields))


class Layer:
    """A ``MessageLayer`` fed by hand; ``now`` is the time of the next input."""

    def __init__(self, now: float = 0.0, **settings: Any):
        self.log = Log()
        self.layer = MessageLayer(DatagramSettings(**settings), random.Random(7), self.log, now)
        self.now = now
        self.requests: List[Incoming] = []  # requests not answered yet, in order
        self.outcomes: List[Tuple[int, str]] = []
        self.sent: List[Tuple[raw.Msg, Any]] = []  # every datagram, decoded, with its peer

    def events(self) -> List[raw.Msg]:
        """Take the layer's events: the datagrams sent since (decoded) are returned."""
        out = []
        while True:
            event = self.layer.next_event()
            if event is None:
                return out
            if isinstance(event, Transmit):
                decoded = raw.decode(event.data)
                out.append(decoded)
                self.sent.append((decoded, event.peer))
            elif isinstance(event, Incoming):
                self.requests.append(event)
            else:
                assert isinstance(event, Notified)
                self.outcomes.append((event.ref, event.outcome))

    def feed(self, msg_or_bytes: Any, peer: Any = PEER, now: Optional[float] = None
             ) -> List[raw.Msg]:
        self.now = self.now if now is None else now
        data = msg_or_bytes if isinstance(msg_or_bytes, bytes) else raw.encode(msg_or_bytes)
        self.layer.receive_datagram(data, peer, self.now)
        return self.events()

    def request(self) -> Incoming:
        """The one request the last feeds made."""
        [incoming] = self.requests
        self.requests = []
        return incoming

    def respond(self, incoming: Incoming, code: int, payload: bytes = b"",
                authenticated: bool = False, now: Optional[float] = None, **options: Any
                ) -> List[raw.Msg]:
        self.now = self.now if now is None else now
        self.layer.respond(incoming, Answer(make_response(code, payload, **options),
                                            authenticated), self.now)
        return self.events()

    def answer(self, msg: raw.Msg, code: int, payload: bytes = b"", peer: Any = PEER,
               **options: Any) -> List[raw.Msg]:
        """Feed ``msg`` and answer it at once with ``code``: what went out."""
        out = self.feed(msg, peer)
        if not self.requests:
            return out
        return out + self.respond(self.request(), code, payload, **options)

    def until(self, end: float) -> List[Tuple[float, raw.Msg]]:
        """Run the layer's timer up to ``end``: (time, datagram) of what went out."""
        out = []
        while True:
            due = max(self.layer.next_timer(), self.now)
            if due > end:
                self.now = end
                return out
            self.now = due
            self.layer.handle_timer(due)
            out += [(due, msg) for msg in self.events()]

    def verify(self, peer: Any = PEER) -> "Layer":
        self.layer.verify(peer)
        return self


def incoming(remote: Any = PEER, code: int = 2, path: Tuple[bytes, ...] = (
        b"api", b"v1", b"tok", b"telemetry"), payload: bytes = b"{}", token: bytes = b"t",
        mid: int = 1) -> Incoming:
    """A request as a transport hands it to the glue (``code``: POST unless told)."""
    from bridge.coap.message import CON, Message
    options = tuple((11, segment) for segment in path)
    return Incoming(remote, Message(code, token, options, payload, CON, mid))
