"""A blocking DTLS 1.2 client for tests: OpenSSL (pyOpenSSL over memory BIOs) on a UDP
socket, speaking raw CoAP like ``coapraw.Client``, with PSK (through cryptography's
bindings), a client certificate, or neither, and session resumption from any port."""

from __future__ import annotations

import socket
import time
from typing import Any, List, Optional, Tuple

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

import coapraw as raw

_binding = Binding()
ffi, lib = _binding.ffi, _binding.lib
CCM8_CIPHERS = b"ECDHE-ECDSA-AES128-CCM8:PSK-AES128-CCM8:@SECLEVEL=0"


def client_context(psk: Optional[Tuple[str, bytes]] = None, cert: Optional[str] = None,
                   key: Optional[str] = None, ciphers: Optional[bytes] = None,
                   tickets: bool = False) -> Tuple[SSL.Context, Any]:
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(0xFEFD)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | (0 if tickets else SSL.OP_NO_TICKET))
    ctx.set_verify(SSL.VERIFY_NONE)
    if cert:
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
    keep = None
    if psk is not None:
        identity, secret = psk[0].encode(), psk[1]

        def on_hint(ssl, hint, out_identity, max_identity, out_psk, max_psk):
            ffi.memmove(out_identity, identity + b"\0", len(identity) + 1)
            ffi.memmove(out_psk, secret, len(secret))
            return len(secret)
        keep = ffi.callback("unsigned int (*)(SSL *, const char *, char *, unsigned int, "
                            "unsigned char *, unsigned int)", on_hint)
        lib.SSL_CTX_set_psk_client_callback(ctx._context, keep)
    # as libcoap's clients: PSK suites only with a key, certificate suites otherwise (last:
    # pyOpenSSL before 26 checks the list on a Connection, freezing the context)
    ctx.set_cipher_list(ciphers or (b"PSK:@SECLEVEL=0" if psk else b"DEFAULT:@SECLEVEL=0"))
    return ctx, keep


class DtlsClient:
    def __init__(self, host: str, port: int, context: Tuple[SSL.Context, Any],
                 session: Optional[SSL.Session] = None, timeout: float = 5.0,
                 sock: Optional[socket.socket] = None):
        self.addr = (host, port)
        self.context = context  # (ctx, callback): the callback must outlive the context use
        self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.conn = SSL.Connection(context[0], None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(1200)
        if session is not None:
            self.conn.set_session(session)
        self.received: List[bytes] = []  # every datagram from the server, in order
        self.closed_by_peer = False  # its close_notify came
        self.sent: List[bytes] = []  # every datagram this client sent, in order

    def _flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            self.sent.append(data)
            self.sock.sendto(data, self.addr)

    def _pump(self, deadline: float) -> bool:
        """One datagram in (or a retransmission timeout handled); False at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        wait = self.conn.DTLSv1_get_timeout()
        self.sock.settimeout(max(0.01, min(left, wait if wait is not None else left)))
        try:
            data, _ = self.sock.recvfrom(70000)
        except socket.timeout:
            self.conn.DTLSv1_handle_timeout()
            self._flush()
            return True
        self.received.append(data)
        self.conn.bio_write(data)
        return True

    def handshake(self, timeout: Optional[float] = None) -> "DtlsClient":
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                self.conn.do_handshake()
                self._flush()
                return self
            except SSL.WantReadError:
                self._flush()
            if not self._pump(deadline):
                raise TimeoutError("DTLS handshake timed out")

    @property
    def resumed(self) -> bool:
        return bool(lib.SSL_session_reused(self.conn._ssl))

    def session(self) -> SSL.Session:
        return self.conn.get_session()

    def send(self, msg: raw.Msg) -> None:
        self.send_raw(raw.encode(msg))

    def send_raw(self, data: bytes) -> None:
        self.conn.send(data)
        self._flush()

    def recv(self, timeout: Optional[float] = None) -> Optional[raw.Msg]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                return raw.decode(self.conn.recv(65536))
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self.closed_by_peer = True
                return None
            self._flush()
            if not self._pump(deadline):
                return None

    def exchange(self, msg: raw.Msg, timeout: float = 5.0, retransmit: int = 0) -> raw.Msg:
        """Send ``msg`` and return its response; ``retransmit``: resend it (same message ID)
        that many times, a second apart, as a CoAP client does when nothing comes."""
        self.send(msg)
        while True:
            reply = self.recv(timeout if not retransmit else 1.0)
            if reply is None and retransmit:
                retransmit -= 1
                self.send(msg)
                continue
            if reply is None:
                raise TimeoutError("no response to mid %d" % msg.mid)
            if reply.code == 0 and reply.mtype == raw.ACK:
                continue
            if reply.mtype == raw.CON:
                self.send(raw.Msg(raw.ACK, 0, reply.mid))
            return reply

    def close(self, notify: bool = True) -> None:
        if notify:
            try:
                self.conn.shutdown()
                self._flush()
            except SSL.Error:
                pass
        self.sock.close()


def pump(client, server):
    """Handshake both ends; True when both finished, False when one failed."""
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return False
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
        if done == 2:
            return True
    return False
