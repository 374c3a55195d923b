"""The DTLS server's calls through cryptography's bindings (``bridge.dtls.bindings``) and
the HelloVerifyRequest answered without OpenSSL, against real OpenSSL objects: a
pyOpenSSL client and the server's own context, over memory BIOs."""

from __future__ import annotations

import random

import pytest
from OpenSSL import SSL

from bridge.dtls import bindings, psk, records
from bridge.dtls.context import build_context
from bridge.dtls.cookies import CookieJar
from bridge.dtls.listener import Listener
from bridge.settings import DtlsConfig
from dtlsclient import client_context

A, B = ("10.0.0.1", 40001), ("10.0.0.2", 40002)


class Log:
    def __init__(self):
        self.failures = []

    def failure(self, text):
        self.failures.append(text)


def listener_for(generate=None, log=None):
    jar = CookieJar(random.Random(1).randbytes, 0.0)
    listener = Listener(jar, 1200)
    context = build_context(DtlsConfig(enabled=True, psk=True))
    keep = (bindings.CookieCallbacks(context, generate or listener.cookie_generate,
                                     listener.cookie_verify, log or Log()),
            psk.PskServer(context, lambda connection, identity: b"k" * 16, Log()))
    listener.start(context, keep[0])
    return listener, keep


def first_flight(client):
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return client.bio_read(65536)


@pytest.fixture
def client():
    ctx = client_context(psk=("dev", b"k" * 16))
    conn = SSL.Connection(ctx[0], None)
    conn.set_connect_state()
    conn.set_ciphertext_mtu(1200)
    conn.keep = ctx  # the PSK callback lives as long as the connection
    return conn


def test_our_hello_verify_request_is_the_one_openssl_writes(client):
    listener, _keep = listener_for()
    hello_data = first_flight(client)
    hello = records.client_hello(hello_data)
    assert hello is not None and hello.plain and hello.cookie == b""
    ours = listener.listen(hello_data, A, hello, 0.0)
    theirs = listener.listen(hello_data, A, hello._replace(plain=False), 0.0)
    assert ours[0] is None and theirs[0] is None
    assert ours[1] == theirs[1] and ours[1][13] == records.HELLO_VERIFY_REQUEST
    assert len(ours[1]) < len(hello_data)  # no amplification
    # the second ClientHello (message_seq 1, a record sequence of its own) from another
    # address: its cookie is not B's, a new HelloVerifyRequest, again as OpenSSL's
    client.bio_write(ours[1])
    second = first_flight(client)
    hello2 = records.client_hello(second)
    assert hello2.plain and len(hello2.cookie) == 16 and hello2.sequence != hello.sequence
    ours = listener.listen(second, B, hello2, 0.0)
    theirs = listener.listen(second, B, hello2._replace(plain=False), 0.0)
    assert ours[0] is None and ours[1] == theirs[1] and ours[1][5:11] == second[5:11]
    # from its own address the cookie verifies: OpenSSL takes the ClientHello on
    connection, reply, error = listener.listen(second, A, hello2, 0.0)
    assert connection is not None and reply == b"" and error == ""
    assert bindings.handshake(connection) == bindings.WANT  # ServerHello... written
    flight = bindings.drain(connection)
    assert flight[0] == records.HANDSHAKE and bindings.waiting(connection) == 0
    assert bindings.timeout(connection) is not None  # its retransmission timer runs


def test_a_client_hello_we_cannot_read_whole_is_left_to_openssl(client):
    hello_data = first_flight(client)
    fragmented = bytearray(hello_data)
    fragmented[13 + 9:13 + 12] = (int.from_bytes(hello_data[13 + 9:13 + 12], "big") - 1
                                  ).to_bytes(3, "big")  # fragment_length < length
    hello = records.client_hello(bytes(fragmented))
    assert hello is not None and not hello.plain
    late = bytearray(hello_data)
    late[13 + 4:13 + 6] = b"\x00\x03"  # message_seq 3: DTLSv1_listen drops it
    assert not records.client_hello(bytes(late)).plain
    tls = bytearray(hello_data)
    tls[1:3] = b"\x03\x03"  # a TLS record version
    assert not records.client_hello(bytes(tls)).plain
    listener, _keep = listener_for()
    connection, reply, error = listener.listen(bytes(fragmented), A, hello, 0.0)
    assert connection is None and reply == b""  # OpenSSL does not answer a fragment


def test_an_exception_in_a_cookie_callback_is_logged_and_no_cookie_is_sent(client):
    def broken():
        raise ValueError("no secret")
    log = Log()
    listener, _keep = listener_for(generate=broken, log=log)
    hello_data = first_flight(client)
    hello = records.client_hello(hello_data)
    connection, reply, error = listener.listen(hello_data, A, hello._replace(plain=False),
                                               0.0)
    assert connection is None and reply == b""
    assert log.failures == ["DTLS cookie generation failed"]


def test_a_missing_binding_is_named_at_start(monkeypatch):
    bindings.require()  # this cryptography has them all
    monkeypatch.setattr(bindings, "MISSING", ("SSL_do_handshake", "DTLSv1_listen"))
    with pytest.raises(bindings.BindingsMissing, match="SSL_do_handshake, DTLSv1_listen"):
        bindings.require()


def test_reason_is_openssls_error_queue_in_words():
    bindings.clear_errors()
    assert bindings.reason() == "unknown OpenSSL failure"
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    with pytest.raises(SSL.Error):
        ctx.set_cipher_list(b"NO-SUCH-CIPHER")
    bindings.lib.SSL_CTX_set_cipher_list(ctx._context, b"NO-SUCH-CIPHER")
    assert "no cipher match" in bindings.reason()
    assert bindings.lib.ERR_peek_error() == 0  # emptied
