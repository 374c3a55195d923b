"""A real OpenSSL DTLS client over memory BIOs, for tests that hand every datagram over
by hand: to the sans-IO ``DtlsServer`` (tests/dtls) or to the Twisted ``DtlsTransport``
(tests/edge). ``Wire`` is what the client talks to: ``deliver(datagram, addr)`` and
``take(addr)`` (the datagrams sent back to ``addr`` since the last take)."""

from __future__ import annotations

import os
from typing import Any, List, Optional

from OpenSSL import SSL

import coapraw as raw
import dtlscerts
from bridge.dtls import records
from dtlsclient import client_context


class MemoryPeer:
    """One client at ``addr``: an OpenSSL DTLS client Connection."""

    def __init__(self, wire: Any, addr, psk=None, cert: Optional[dtlscerts.Issued] = None,
                 session=None, ctx=None, cert_dir: Optional[str] = None):
        self.wire = wire
        self.addr = addr
        paths = (None, None)
        if cert is not None:
            paths = cert.write(cert_dir or os.getcwd(), "c%s-%d" % (addr[0], addr[1]))
        self.ctx = ctx or client_context(psk=psk, cert=paths[0], key=paths[1])
        self.conn = SSL.Connection(self.ctx[0], None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(1200)  # a memory BIO has no MTU to query
        if session is not None:
            self.conn.set_session(session)
        self.flights: List[bytes] = []  # every datagram this client sent

    def out(self) -> List[bytes]:
        blob = b""
        while True:
            try:
                blob += self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
        return records.datagrams(blob, 1400) if blob else []

    def deliver(self, datagrams) -> None:
        for datagram in datagrams:
            self.flights.append(datagram)
            self.wire.deliver(datagram, self.addr)

    def take_in(self) -> None:
        """What came back, into the client's OpenSSL."""
        for datagram in self.wire.take(self.addr):
            self.conn.bio_write(datagram)

    def step(self) -> bool:
        """One round trip of the handshake; True once it is done."""
        try:
            self.conn.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        self.deliver(self.out())
        self.take_in()
        return done

    def handshake(self, rounds: int = 8) -> bool:
        for _ in range(rounds):
            try:
                if self.step():
                    return True
            except SSL.Error:
                return False
        return False

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self.deliver(self.out())

    def recv(self) -> Optional[bytes]:
        self.take_in()
        try:
            return self.conn.recv(65536)
        except SSL.WantReadError:
            return None

    def request(self, path: str = "/x", mid: int = 1) -> Optional[raw.Msg]:
        self.send(raw.encode(raw.request(raw.GET, path, mid=mid)))
        data = self.recv()
        return raw.decode(data) if data is not None else None

    def closed_by_server(self) -> bool:
        """Whether the server's close_notify came (after whatever it sent before it)."""
        self.take_in()
        while True:
            try:
                self.conn.recv(65536)
            except SSL.ZeroReturnError:
                return True
            except SSL.WantReadError:
                return False
