"""The Twisted side of CoAPs: ``DtlsTransport`` with a fake UDP port and a fake clock,
its own CoAP message layer (``DatagramDriver``) behind it, and a real OpenSSL client
(pyOpenSSL over memory BIOs) in front. What the DTLS server itself does is tested
without any of this in tests/dtls/test_server.py; here: the hookup into CoAP, the log
lines, the timer."""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

import coapraw as raw
import dtlscerts
from bridge.coap.datagram import Observation
from bridge.coap.message import make_response
from bridge.settings import DtlsConfig
from bridge.core.auth import Certificate, PresharedKey, certificate_id
from bridge.dtls.events import DtlsPeer
from bridge.logwriter import format_message
from bridge.edge import coap as coap_edge
from bridge.edge import dtls as dtls_edge
from bridge.edge.datagram import DatagramDriver
from dtlsmemory import MemoryPeer


class FakeUdp:
    def __init__(self):
        self.sent: List[Tuple[bytes, Tuple[str, int]]] = []

    def write(self, data, addr):
        self.sent.append((data, addr))


class Bench:
    """The transport, its CoAP endpoint (answering with the peer's credential) and keys;
    the ``Wire`` of dtlsmemory."""

    def __init__(self, tmp_path, in_use=None, **settings):
        self.dir = str(tmp_path)
        self.clock = Clock()
        self.clock.advance(1000)
        self.keys: Dict[str, bytes] = {"dev-psk": b"sixteen byte key"}
        self.ca, cert, key, ca_path = dtlscerts.server_files(self.dir)
        self.cfg = DtlsConfig(enabled=True, cert_file=cert, key_file=key, ca_file=ca_path,
                              **settings)
        self.requests: List[raw.Msg] = []
        # CoAPs' own message layer and its driver, as the bridge has it
        self.coap = DatagramDriver(self.answer, self.clock, coap_edge.datagram_settings(0.5, 247))
        self.udp = FakeUdp()
        self.dtls = dtls_edge.DtlsTransport(self.cfg, self.coap, self.clock, self.keys.get,
                                            random.Random(1).randbytes, in_use=in_use)
        self.dtls.transport = self.udp
        self.dtls.startProtocol()

    def answer(self, request):
        self.requests.append(request)
        return make_response(69, repr(request.peer.credential).encode(), 0)

    def deliver(self, datagram, addr) -> None:
        self.dtls.datagramReceived(datagram, addr)

    def take(self, addr) -> List[bytes]:
        mine = [d for d, a in self.udp.sent if a == addr]
        self.udp.sent = [(d, a) for d, a in self.udp.sent if a != addr]
        return mine

    def client(self, addr, **kwargs) -> MemoryPeer:
        return MemoryPeer(self, addr, cert_dir=self.dir, **kwargs)

    def session(self, addr):
        return self.dtls.server.table.get(addr)


@pytest.fixture
def bench(tmp_path):
    return Bench(tmp_path)


A = ("10.0.0.1", 40001)
B = ("10.0.0.2", 40002)


def test_a_request_over_a_psk_session_reaches_coap_with_its_peer_and_credential(bench):
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    reply = peer.request()
    assert reply.code_str == "2.05"
    assert reply.payload == repr(PresharedKey("dev-psk")).encode()
    remote = bench.requests[0].peer
    assert type(remote) is DtlsPeer and remote.address == A and remote.key
    assert bench.coap.layer.verified(remote)  # its handshake proved its address
    assert bench.dtls.stats["handshakes_full"] == 1 and bench.dtls.sessions_established == 1


def test_a_certificate_devices_requests_carry_its_leaf_and_cn(bench):
    device = dtlscerts.issue("device-7", bench.ca)
    peer = bench.client(A, cert=device)
    assert peer.handshake()
    assert peer.request().payload == repr(Certificate(certificate_id(device.der),
                                                      "device-7")).encode()


def test_a_coap_message_over_4096_bytes_in_one_record_is_one_request(bench):
    # #27.1: the record was read in 4096-byte pieces, each taken for a message of its own
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    forged = raw.encode(raw.request(raw.POST, "/api/v1/telemetry", b'{"forged": 1}',
                                    mid=0x6666, token=b"\x66"))
    message = raw.request(raw.POST, "/api/v1/telemetry", b"", mid=0x1111, token=b"\x11")
    head = raw.encode(message)
    payload = b"P" * (4096 - len(head) - 1) + forged
    payload += b"Q" * (5000 - len(head) - 1 - len(payload))
    message.payload = payload
    assert len(raw.encode(message)) == 5000 and raw.encode(message)[4096:].startswith(forged)
    peer.send(raw.encode(message))
    reply = raw.decode(peer.recv())
    assert (reply.mid, reply.token, reply.code_str) == (0x1111, b"\x11", "2.05")
    assert len(bench.requests) == 1 and bench.requests[0].message.payload == payload
    assert peer.recv() is None  # nothing answered the forged request


def test_an_ended_session_is_reported_to_the_core_as_a_peer_gone(bench):
    gone = []
    bench.coap.on_peer_gone = gone.append  # the bridge ends the peer's observations
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    key = bench.session(A).peer
    peer.conn.shutdown()
    peer.deliver(peer.out())
    assert bench.session(A) is None and gone == [key]
    assert not bench.coap.layer.verified(key)


def test_the_timer_ends_idle_sessions_unless_in_use_and_closes_them(tmp_path):
    used = set()
    bench = Bench(tmp_path, in_use=used.__contains__)
    kept = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    idle = bench.client(B, psk=("dev-psk", bench.keys["dev-psk"]))
    assert kept.handshake() and idle.handshake()
    used.add(bench.session(A).peer)
    bench.clock.advance(bench.cfg.idle_timeout + 1)
    assert bench.session(B) is None and idle.closed_by_server()
    assert bench.session(A) is not None and not kept.closed_by_server()
    assert kept.request() is not None
    assert bench.dtls.stats["idle_ended"] == 1


def test_registry_changes_end_sessions_with_close_notify_at_once(bench):
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    assert bench.dtls.end_sessions(lambda cred: cred == PresharedKey("dev-psk")) == 1
    assert peer.closed_by_server()


@pytest.fixture
def dtls_info_lines():
    lines: List[str] = []

    def observer(event):
        if event.get("log_namespace") == "coapbridge.dtls" and \
                event.get("log_level") >= LogLevel.info:
            lines.append(format_message(event))
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_failed_handshakes_are_summed_up_once_a_minute_not_logged_each(bench,
                                                                     dtls_info_lines):
    for n in range(20):  # a wrong key fails silently: each ends at the deadline
        peer = bench.client(("10.4.0.%d" % n, 4000 + n), psk=("dev-psk", b"not the key!"))
        assert not peer.handshake(rounds=4)
    untrusted = dtlscerts.issue("stranger", dtlscerts.ca())
    assert not bench.client(("10.4.1.1", 4100), cert=untrusted).handshake()
    assert bench.dtls.stats["handshakes_failed"] == 1
    assert len(dtls_info_lines) == 1  # the first at once
    # at once: no "in the last 0 s", and "1 address"
    assert dtls_info_lines[0].startswith("1 DTLS handshake did not complete (1 failed")
    assert "from 1 address; " in dtls_info_lines[0]
    assert "(1 failed, 0 not finished" in dtls_info_lines[0]
    assert "certificate verify failed" in dtls_info_lines[0]
    bench.clock.advance(bench.cfg.handshake_timeout + 1)
    assert bench.dtls.stats["handshake_timeouts"] == 20
    assert len(dtls_info_lines) == 1
    bench.clock.advance(60)
    assert len(dtls_info_lines) == 2
    assert dtls_info_lines[1].startswith("20 DTLS handshakes did not complete in the last ")
    assert "(0 failed, 20 not finished" in dtls_info_lines[1]
    assert "from 20 addresses" in dtls_info_lines[1]
    bench.clock.advance(600)
    assert len(dtls_info_lines) == 2  # nothing new: no line


def test_a_session_ended_by_the_registry_is_logged_with_its_identity_masked(
        bench, dtls_info_lines):
    bench.keys["a-long-psk-identity"] = b"another key!"
    peer = bench.client(A, psk=("a-long-psk-identity", b"another key!"))
    assert peer.handshake()
    bench.dtls.end_sessions(lambda cred: True)
    [line] = dtls_info_lines
    assert "ended: PSK identity " in line and "left the registry" in line
    assert "a-long-psk-identity" not in line


def test_refusals_past_the_handshake_bounds_are_logged_once_a_minute(tmp_path,
                                                                    dtls_info_lines):
    bench = Bench(tmp_path, max_handshakes_per_address=1)
    for port in range(5):
        peer = bench.client(("10.5.0.1", 5000 + port), psk=("dev-psk", b"x" * 16))
        peer.step()
        peer.step()
    assert bench.dtls.stats["refused_address"] == 4
    assert len(dtls_info_lines) == 1 and "dtls.max_handshakes_per_address" in \
        dtls_info_lines[0]


def test_nothing_is_written_once_the_port_stopped(bench):
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    gone: List[Optional[object]] = []
    bench.coap.on_peer_gone = gone.append
    bench.dtls.stopProtocol()
    assert bench.take(A) == [] and len(gone) == 1 and bench.dtls.sessions_established == 0


def test_each_handshake_is_reported_with_its_outcome_method_and_time(bench):
    """The metrics' seam (``on_handshake``): full, resumed, failed and timed out, with the
    method the device authenticated by (or tried to), and the seconds it took."""
    heard = []
    bench.dtls.on_handshake = lambda *event: heard.append(event)
    first = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert first.handshake()
    rebound = bench.client(("10.0.0.1", 50000), session=first.conn.get_session(),
                           ctx=first.ctx)
    assert rebound.handshake()
    assert bench.client(B, cert=dtlscerts.issue("dev", bench.ca)).handshake()
    assert not bench.client(("10.0.0.3", 5), cert=dtlscerts.issue("x", dtlscerts.ca())
                            ).handshake()
    assert bench.client(("10.0.0.4", 6)).handshake()  # no client credential: a token device
    assert not bench.client(("10.0.0.5", 7), psk=("dev-psk", b"not the key!")
                            ).handshake(rounds=4)
    bench.clock.advance(bench.cfg.handshake_timeout + 1)
    assert [(outcome, method) for outcome, method, _ in heard] == [
        ("full", "psk"), ("resumed", "psk"), ("full", "x509"), ("failed", "x509"),
        ("full", "none"), ("timeout", "psk")]
    assert all(seconds >= 0 for _, _, seconds in heard[:5])
    assert heard[5][2] >= bench.cfg.handshake_timeout  # from its start to the deadline


def notified_over_a_session(bench, ref):
    """A CON notification ``ref`` to A's PSK session; returns the client, what it received,
    and the list the driver reports fates into."""
    outcomes: List[Tuple[int, str]] = []
    bench.coap.on_result = lambda r, outcome: outcomes.append((r, outcome))
    peer = bench.client(A, psk=("dev-psk", bench.keys["dev-psk"]))
    assert peer.handshake()
    key = bench.session(A).peer
    bench.coap.notify(ref, key, b"\x0b", 69, b'{"a":1}', 7, Observation(True, 0.0))
    sent = raw.decode(peer.recv())
    assert sent.mtype == raw.CON and sent.token == b"\x0b" and sent.payload == b'{"a":1}'
    return peer, key, sent, outcomes


def test_a_withdrawn_notification_is_not_retransmitted_over_its_session(bench):
    """Power saving over CoAPs: the device fell asleep, the notification is withdrawn from
    CoAPs' own message layer (not plain UDP's), and nothing more goes over the session."""
    peer, key, _, outcomes = notified_over_a_session(bench, 51)
    bench.coap.withdraw(51, key)
    assert outcomes == [(51, "withdrawn")]
    bench.clock.pump([1.0] * 120)  # past every retransmission's time
    assert peer.recv() is None and bench.coap.retransmissions == 0
    assert outcomes == [(51, "withdrawn")]


def test_an_ack_of_a_withdrawn_notification_over_dtls_that_comes_after_all_is_reported(
        bench):
    """Its ACK was on its way when the device fell asleep: it comes in a DTLS record after
    the withdrawal, and is reported under the same ref, once: the core must not send the
    notification again (tests/core/test_power.py)."""
    peer, key, sent, outcomes = notified_over_a_session(bench, 52)
    bench.coap.withdraw(52, key)
    peer.send(raw.encode(raw.Msg(raw.ACK, 0, sent.mid)))
    assert outcomes == [(52, "withdrawn"), (52, "ack")]
    peer.send(raw.encode(raw.Msg(raw.ACK, 0, sent.mid)))  # a duplicate: nothing more
    bench.clock.pump([1.0] * 120)
    assert outcomes == [(52, "withdrawn"), (52, "ack")] and peer.recv() is None
    assert bench.coap.retransmissions == 0
