"""A DTLS load generator: OpenSSL clients (pyOpenSSL over memory BIOs) on non-blocking UDP
sockets, many at once in one process, for the DTLS section of ``bench/run.py``.

    python bench/dtlsload.py handshakes PORT SECONDS CONCURRENCY psk|ecdsa [resume] [CERT KEY]
    python bench/dtlsload.py telemetry PORT SECONDS SESSIONS WINDOW TOKEN...
    python bench/dtlsload.py idle PORT COUNT TOKEN      (then waits for a line on stdin)

Each prints one JSON line. ``handshakes`` keeps CONCURRENCY handshakes going, each from
a fresh socket (so each is a new peer: cookie exchange, then the full or resumed
handshake, then one CoAP GET answered 4.04, then the next); ``telemetry`` opens SESSIONS PSK sessions
(identity = token) and keeps WINDOW CON POSTs outstanding on each; ``idle`` opens COUNT
sessions, sends one request on each and leaves them open. A handshake or request
unanswered within 3 s counts as lost (no retransmission).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.append(os.path.join(os.path.dirname(HERE), "tests"))  # after bench/: its loadgen

from OpenSSL import SSL  # noqa: E402

from dtlsclient import client_context, lib  # noqa: E402
import loadgen  # noqa: E402  (bench/loadgen.py: the CoAP request encoding)

TIMEOUT = 3.0
PSK_KEY = b"coapbridge bench psk"


GET, POST = 1, 2


def coap(mid: int, template: Tuple[int, bytes]) -> bytes:
    """A CON request: ``template`` is (method, what bench/loadgen.py's request_template
    gives: everything after the header and the 2-byte token); the token is the mid."""
    method, rest = template
    mid &= 0xFFFF
    return bytes([0x42, method]) + struct.pack("!HH", mid, mid) + rest


def template(method: int, path: str, payload: bytes = b"", query: str = "") -> Tuple[int, bytes]:
    extra = [(15, query.encode())] if query else []
    return method, loadgen.request_template(method, path, payload, extra)


class Peer:
    """One DTLS client on its own socket."""

    def __init__(self, sel: selectors.BaseSelector, addr: Tuple[str, int], ctx: Any,
                 session: Optional[SSL.Session] = None):
        self.sel = sel
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(1232)
        if session is not None:
            self.conn.set_session(session)
        self.established = False
        self.started = time.monotonic()
        sel.register(self.sock, selectors.EVENT_READ, self)

    def flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(4096)
            except SSL.WantReadError:
                return
            try:
                self.sock.sendto(data, self.addr)
            except BlockingIOError:
                pass

    def step(self) -> bool:
        """Drive the handshake; True once established."""
        try:
            self.conn.do_handshake()
            self.established = True
        except SSL.WantReadError:
            pass
        self.flush()
        return self.established

    def receive(self) -> List[bytes]:
        """Datagrams in; the decrypted records (once established)."""
        out = []
        while True:
            try:
                data = self.sock.recv(70000)
            except (BlockingIOError, ConnectionRefusedError):
                break
            self.conn.bio_write(data)
            if not self.established:
                if not self.step():
                    continue
            while True:
                try:
                    out.append(self.conn.recv(4096))
                except SSL.WantReadError:
                    break
                except SSL.Error:
                    break
        return out

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self.flush()

    def close(self) -> None:
        self.sel.unregister(self.sock)
        self.sock.close()


def handshakes(port: int, seconds: float, concurrency: int, kind: str, resume: bool,
               cert: Optional[str], key: Optional[str]) -> Dict[str, Any]:
    # PSK: CoAP's mandatory TLS_PSK_WITH_AES_128_CCM_8 (RFC 7252 §9.1.3.1), as a device
    ctx = client_context(psk=("tdev0", PSK_KEY), ciphers=b"PSK-AES128-CCM8:@SECLEVEL=0") \
        if kind == "psk" else \
        client_context(cert=cert, key=key, ciphers=b"ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0")
    addr = ("127.0.0.1", port)
    sel = selectors.DefaultSelector()
    get = template(GET, "/bench")  # answered 4.04 at once: the handshake is what is measured
    session = None
    if resume:  # one full handshake first, whose session every other one resumes
        first = Peer(sel, addr, ctx[0])
        first.step()
        while not first.established and time.monotonic() - first.started < TIMEOUT:
            for key_, _ in sel.select(0.1):
                key_.data.receive()
        session = first.conn.get_session()
        first.close()
    done = lost = resumed = 0
    peers = [Peer(sel, addr, ctx[0], session) for _ in range(concurrency)]
    for peer in peers:
        peer.step()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key_, _ in sel.select(0.05):
            peer = key_.data
            was = peer.established
            records = peer.receive()
            if peer.established and not was:
                peer.send(coap(1, get))
            if records:  # the answer to the GET: this handshake is done
                done += 1
                resumed += lib.SSL_session_reused(peer.conn._ssl)
                peer.close()
                fresh = Peer(sel, addr, ctx[0], session)
                fresh.step()
                peers[peers.index(peer)] = fresh
        now = time.monotonic()
        for n, peer in enumerate(peers):
            if now - peer.started > TIMEOUT:
                lost += 1
                peer.close()
                peers[n] = Peer(sel, addr, ctx[0], session)
                peers[n].step()
    for peer in peers:
        peer.close()
    return {"handshakes": done, "resumed": resumed, "lost": lost, "seconds": seconds,
            "rate": round(done / seconds)}


def establish(sel: selectors.BaseSelector, addr: Tuple[str, int], tokens: List[str],
              count: int) -> List[Peer]:
    contexts = {token: client_context(psk=(token, PSK_KEY),
                                      ciphers=b"PSK-AES128-CCM8:@SECLEVEL=0")
                for token in set(tokens)}
    peers = []
    for n in range(count):
        token = tokens[n % len(tokens)]
        peer = Peer(sel, addr, contexts[token][0])
        peer.token = token  # type: ignore[attr-defined]
        peer.ctx = contexts[token]  # type: ignore[attr-defined]  (keeps the PSK callback)
        peer.step()
        while not peer.established and time.monotonic() - peer.started < TIMEOUT:
            for key_, _ in sel.select(0.1):
                key_.data.receive()
        if peer.established:
            peers.append(peer)
        else:
            peer.close()
    return peers


def telemetry(port: int, seconds: float, sessions: int, window: int,
              tokens: List[str]) -> Dict[str, Any]:
    sel = selectors.DefaultSelector()
    peers = establish(sel, ("127.0.0.1", port), tokens, sessions)
    templates = {peer: template(POST, "/api/v1/%s/telemetry" % peer.token,
                                b'{"temperature":21.5}') for peer in peers}
    mids = {peer: 0 for peer in peers}
    answered = 0
    codes: Dict[str, int] = {}

    def post(peer: Peer) -> None:
        mids[peer] += 1
        peer.send(coap(mids[peer], templates[peer]))
    for peer in peers:
        for _ in range(window):
            post(peer)
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        for key_, _ in sel.select(0.05):
            peer = key_.data
            for record in peer.receive():
                if len(record) >= 2 and record[0] >> 6 == 1 and record[1]:
                    code = "%d.%02d" % (record[1] >> 5, record[1] & 31)
                    codes[code] = codes.get(code, 0) + 1
                    answered += 1
                    post(peer)
    elapsed = time.monotonic() - start
    for peer in peers:
        peer.close()
    return {"sessions": len(peers), "answered": answered, "codes": codes,
            "rate": round(answered / elapsed)}


def idle(port: int, count: int, token: str) -> None:
    sel = selectors.DefaultSelector()
    peers = establish(sel, ("127.0.0.1", port), [token], count)
    get = template(GET, "/bench")
    for n, peer in enumerate(peers):
        peer.send(coap(n, get))
    deadline = time.monotonic() + 10
    answered = 0
    while answered < len(peers) and time.monotonic() < deadline:
        for key_, _ in sel.select(0.1):
            answered += len(key_.data.receive())
    print(json.dumps({"sessions": len(peers), "answered": answered}), flush=True)
    sys.stdin.readline()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "handshakes":
        seconds, concurrency, kind = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        rest = sys.argv[6:]
        resume = bool(rest) and rest[0] == "resume"
        if resume:
            rest = rest[1:]
        cert, key = (rest + [None, None])[:2]
        print(json.dumps(handshakes(port, seconds, concurrency, kind, resume, cert, key)))
    elif mode == "telemetry":
        print(json.dumps(telemetry(port, float(sys.argv[3]), int(sys.argv[4]),
                                   int(sys.argv[5]), sys.argv[6:])))
    elif mode == "idle":
        idle(port, int(sys.argv[3]), sys.argv[4])


if __name__ == "__main__":
    main()
