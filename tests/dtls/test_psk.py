"""The PSK server callback (bridge/dtls/psk.py) on a real handshake over memory BIOs."""

from __future__ import annotations

from OpenSSL import SSL

from bridge.dtls import psk
from bridge.logs import logger
from dtlsclient import client_context, pump


def server_for(lookup):
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_cipher_list(b"PSK:@SECLEVEL=0")
    holder = psk.PskServer(ctx, lookup, logger("dtls"), b"hint")
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    return conn, holder


def client_for(identity, key):
    ctx = client_context(psk=(identity, key))
    tls = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # the same callback on a TLS context (the DTLS one is tested in test_dtls_transport)
    tls.set_max_proto_version(SSL.TLS1_2_VERSION)
    tls.set_cipher_list(b"PSK:@SECLEVEL=0")
    psk.lib.SSL_CTX_set_psk_client_callback(tls._context, ctx[1])
    conn = SSL.Connection(tls, None)
    conn.set_connect_state()
    return conn, ctx


def test_the_lookup_gets_the_connection_and_identity_and_its_key_is_used():
    seen = []

    def lookup(connection, identity):
        seen.append((type(connection), identity))
        return b"k" * 16 if identity == b"dev" else None
    server, _keep = server_for(lookup)
    client, _keep2 = client_for("dev", b"k" * 16)
    assert pump(client, server)
    assert seen == [(SSL.Connection, b"dev")]
    assert "PSK" in server.get_cipher_name()


def test_unknown_identity_wrong_key_and_a_failing_lookup_fail_the_handshake():
    def failing(connection, identity):
        raise RuntimeError("registry gone")
    for lookup, identity, key in ((lambda c, i: None, "x", b"k" * 16),
                                  (lambda c, i: b"k" * 16, "x", b"j" * 16),
                                  (failing, "x", b"k" * 16)):
        server, _keep = server_for(lookup)
        client, _keep2 = client_for(identity, key)
        assert not pump(client, server)
