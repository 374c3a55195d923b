"""A DTLS 1.2 load generator: many pyOpenSSL clients over memory BIOs in one process.

Every client is a ``Connection`` with memory BIOs on a non-blocking UDP socket of
its own, all driven by one epoll loop: no process per handshake (libcoap's
``coap-client`` costs a fork, an exec and its own key loading each time, and would
measure itself). The suites are the two RFC 7252 §9.1.3 makes mandatory for CoAP,
TLS_PSK_WITH_AES_128_CCM_8 and TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (on P-256).

* ``handshakes``: ``concurrency`` clients each run full (or, given a session,
  resumed) handshakes back to back on their own source address and port; the
  next ClientHello from the same address replaces the session on the server, as a
  rebooted device's does. The HelloVerifyRequest round trip is part of each.
* ``connect``: ``count`` established sessions, kept (for memory, for telemetry).
* ``telemetry``: CON POSTs over established sessions, ``window`` outstanding per
  session, as ``loadgen.run`` does over plain UDP (same templates, same result).

A handshake or request without an answer within ``timeout`` counts as lost (no
retransmission: the server's capacity is what is measured).
"""

from __future__ import annotations

import datetime
import itertools
import os
import selectors
import socket
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

import loadgen

_binding = Binding()
ffi, lib = _binding.ffi, _binding.lib

PSK_SUITE = b"PSK-AES128-CCM8:@SECLEVEL=0"
ECDSA_SUITE = b"ECDHE-ECDSA-AES128-CCM8:@SECLEVEL=0"


# -- certificates ------------------------------------------------------------------------

def _issue(cn: str, issuer: Optional[Tuple[x509.Certificate, Any]], ca: bool
           ) -> Tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(issuer[0].subject if issuer else name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer[1] if issuer else key, hashes.SHA256()))
    return cert, key


def write_certificates(directory: str) -> Dict[str, str]:
    """A CA, the bridge's certificate and one device's (all ECDSA P-256) as PEM files:
    ``ca``, ``server``/``server_key``, ``device``/``device_key``."""
    ca = _issue("bench CA", None, True)
    paths = {"ca": os.path.join(directory, "ca.pem")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca[0].public_bytes(serialization.Encoding.PEM))
    for name in ("server", "device"):
        cert, key = _issue("bench " + name, ca, False)
        paths[name] = os.path.join(directory, name + ".pem")
        paths[name + "_key"] = os.path.join(directory, name + ".key")
        with open(paths[name], "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(paths[name + "_key"], "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


# -- client contexts ---------------------------------------------------------------------

class ClientContext:
    """A DTLS client context: PSK (``psk`` = (identity, key)) or ECDSA with a client
    certificate (``cert``, ``key``). Keep it while its connections live (the PSK
    callback is a C function pointer into this object)."""

    def __init__(self, psk: Optional[Tuple[str, bytes]] = None, cert: Optional[str] = None,
                 key: Optional[str] = None):
        ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        ctx.set_min_proto_version(0xFEFD)
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
        ctx.set_verify(SSL.VERIFY_NONE)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
        self._callback = None
        if cert:
            ctx.use_certificate_chain_file(cert)
            ctx.use_privatekey_file(key)
        if psk is not None:
            identity, secret = psk[0].encode() + b"\0", psk[1]

            def on_hint(ssl, hint, out_identity, max_identity, out_psk, max_psk):
                ffi.memmove(out_identity, identity, len(identity))
                ffi.memmove(out_psk, secret, len(secret))
                return len(secret)
            self._callback = ffi.callback(
                "unsigned int (*)(SSL *, const char *, char *, unsigned int, "
                "unsigned char *, unsigned int)", on_hint)
            lib.SSL_CTX_set_psk_client_callback(ctx._context, self._callback)
        lib.SSL_CTX_set1_curves_list(ctx._context, b"P-256")
        ctx.set_cipher_list(PSK_SUITE if psk is not None else ECDSA_SUITE)  # last (P-list)
        self.context = ctx


class Result:
    def __init__(self) -> None:
        self.duration = 0.0
        self.done = 0  # handshakes completed / requests answered
        self.lost = 0
        self.resumed = 0
        self.cipher = ""
        self.latencies: List[float] = []
        self.codes: Dict[str, int] = {}

    @property
    def rate(self) -> float:
        return self.done / self.duration if self.duration else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


_sources = itertools.count()


def _source() -> str:
    """A loopback address of its own for each client: the server keys sessions by
    address, and a reused (address, port) would replace a session of an earlier run."""
    n = next(_sources)
    return "127.2.%d.%d" % (n // 250 % 250, n % 250 + 1)


class Client:
    """One DTLS client on its own socket."""

    def __init__(self, addr: Tuple[str, int], context: ClientContext,
                 selector: selectors.BaseSelector):
        self.addr = addr
        self.context = context
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((_source(), 0))
        self.sock.connect(addr)
        selector.register(self.sock, selectors.EVENT_READ, self)
        self.conn: SSL.Connection = None  # type: ignore[assignment]
        self.started = 0.0
        self.established = False
        self.session: Optional[SSL.Session] = None  # to resume with
        self.mid = 0
        self.outstanding: Dict[int, float] = {}
        self.template: Optional[bytes] = None  # its own request (``telemetry``), if set

    def start(self, now: float) -> None:
        if self.conn is not None:  # let it go resumably (OpenSSL forgets a session
            self.conn.set_shutdown(SSL.SENT_SHUTDOWN)  # freed without a shutdown)
        self.conn = SSL.Connection(self.context.context, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(1200)
        if self.session is not None:
            self.conn.set_session(self.session)
        self.established = False
        self.started = now
        self.step()

    def step(self) -> bool:
        """Advance the handshake; True once it is complete."""
        try:
            self.conn.do_handshake()
            self.established = True
        except SSL.WantReadError:
            pass
        self.flush()
        return self.established

    def flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            try:
                self.sock.send(data)
            except (BlockingIOError, ConnectionRefusedError):
                return

    def incoming(self) -> None:
        """The datagrams waiting on the socket, fed to the connection."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                return
            self.conn.bio_write(data)

    def close(self, selector: selectors.BaseSelector) -> None:
        selector.unregister(self.sock)
        self.sock.close()


def handshakes(host: str, port: int, context: ClientContext, duration: float,
               concurrency: int = 16, resume: bool = False, timeout: float = 2.0,
               progress: Optional[Callable[[float], None]] = None) -> Result:
    """Full (or resumed, ``resume``) handshakes back to back for ``duration`` seconds."""
    selector = selectors.DefaultSelector()
    clients = [Client((host, port), context, selector) for _ in range(concurrency)]
    result = Result()
    if resume:  # one full handshake each, for a session to resume
        for client in clients:
            client.session = connect_one(client, selector, timeout)
    start = time.perf_counter()
    end = start + duration
    for client in clients:
        client.start(start)
    last = start
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for key, _ in selector.select(0.01):
            client = key.data
            try:
                client.incoming()
                done = client.step()
            except SSL.Error:
                result.lost += 1
                client.start(time.perf_counter())
                continue
            if done:
                now = time.perf_counter()
                result.done += 1
                result.latencies.append(now - client.started)
                if lib.SSL_session_reused(client.conn._ssl):
                    result.resumed += 1
                result.cipher = result.cipher or client.conn.get_cipher_name()
                client.start(now)
        now = time.perf_counter()
        for client in clients:
            if now - client.started > timeout:
                result.lost += 1
                client.start(now)
        if progress is not None and now - last > 0.5:
            progress((now - start) / duration)
            last = now
    result.duration = time.perf_counter() - start
    for client in clients:
        client.close(selector)
    return result


def connect_one(client: Client, selector: selectors.BaseSelector, timeout: float
                ) -> SSL.Session:
    """A full handshake on ``client`` alone; its session."""
    client.start(time.perf_counter())
    deadline = time.perf_counter() + timeout
    while not client.established:
        if time.perf_counter() > deadline:
            raise TimeoutError("DTLS handshake timed out")
        for key, _ in selector.select(0.05):
            key.data.incoming()
            key.data.step()
    return client.conn.get_session()


def connect(host: str, port: int, context: ClientContext, count: int, concurrency: int = 32,
            timeout: float = 5.0, progress: Optional[Callable[[float], None]] = None,
            selector: Optional[selectors.BaseSelector] = None
            ) -> Tuple[List[Client], selectors.BaseSelector]:
    """``count`` established sessions (``concurrency`` handshakes at a time), their
    sockets in ``selector`` (a new one if not given)."""
    selector = selector or selectors.DefaultSelector()
    clients: List[Client] = []
    pending: Dict[Client, float] = {}
    established = 0
    tries = 0
    while established < count:
        while len(pending) < concurrency and established + len(pending) < count:
            client = Client((host, port), context, selector)
            client.start(time.perf_counter())
            pending[client] = client.started
        for key, _ in selector.select(0.05):
            client = key.data
            if client not in pending:
                continue
            try:
                client.incoming()
                done = client.step()
            except SSL.Error:
                pending.pop(client)
                client.close(selector)
                tries += 1
                continue
            if done:
                pending.pop(client)
                clients.append(client)
                established += 1
        now = time.perf_counter()
        for client in [c for c, t in pending.items() if now - t > timeout]:
            pending.pop(client)
            client.close(selector)
            tries += 1
        if tries > count:
            raise RuntimeError("DTLS handshakes keep failing (%d)" % tries)
        if progress is not None:
            progress(established / count)
    return clients, selector


def telemetry(clients: Sequence[Client], selector: selectors.BaseSelector,
              templates: Sequence[bytes], duration: float, window: int = 4,
              timeout: float = 2.0, progress: Optional[Callable[[float], None]] = None
              ) -> Result:
    """CON POSTs (``templates`` as ``loadgen.request_template`` makes them, in turn, or
    each client's own ``template``: a session authenticated as one device may speak only
    for it) over the established ``clients`` for ``duration`` seconds, ``window``
    outstanding on each."""
    result = Result()
    cycle = itertools.cycle(templates)
    start = time.perf_counter()
    end = start + duration
    last = start

    def send(client: Client, now: float) -> None:
        client.mid = (client.mid + 1) & 0xFFFF
        header = struct.pack("!BBHH", 0x42, 2, client.mid, client.mid)
        client.conn.send(header + (client.template or next(cycle)))
        client.outstanding[client.mid] = now

    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for client in clients:
            while len(client.outstanding) < window:
                send(client, now)
            client.flush()
        for key, _ in selector.select(0.01):
            client = key.data
            client.incoming()
            while True:
                try:
                    data = client.conn.recv(65536)
                except SSL.WantReadError:
                    break
                if len(data) < 4 or data[1] == 0:
                    continue  # empty ACK: the answer follows
                mtype = (data[0] >> 4) & 3
                mid = struct.unpack("!H", data[2:4])[0]
                if mtype in (loadgen.CON, loadgen.NON):
                    if mtype == loadgen.CON:
                        client.conn.send(struct.pack("!BBH", 0x60, 0, mid))
                    mid = struct.unpack("!H", data[4:6])[0] if data[0] & 0x0F == 2 else mid
                sent_at = client.outstanding.pop(mid, None)
                if sent_at is None:
                    continue
                result.done += 1
                code = "%d.%02d" % (data[1] >> 5, data[1] & 31)
                result.codes[code] = result.codes.get(code, 0) + 1
                result.latencies.append(time.perf_counter() - sent_at)
            client.flush()
        now = time.perf_counter()
        for client in clients:
            stale = [m for m, t in client.outstanding.items() if now - t > timeout]
            for m in stale:
                del client.outstanding[m]
                result.lost += 1
        if progress is not None and now - last > 0.5:
            progress((now - start) / duration)
            last = now
    result.duration = time.perf_counter() - start
    # let the answers still on the way arrive, so that the next run starts clean
    drain = time.perf_counter() + 0.5
    while time.perf_counter() < drain and any(c.outstanding for c in clients):
        for key, _ in selector.select(0.05):
            client = key.data
            client.incoming()
            while True:
                try:
                    data = client.conn.recv(65536)
                except SSL.WantReadError:
                    break
                if len(data) >= 6 and data[1] != 0:
                    client.outstanding.pop(struct.unpack("!H", data[4:6])[0], None)
    for client in clients:
        client.outstanding.clear()
    return result
