"""The TLS context of coaps+tcp and coaps+ws (bridge/edge/tls.py) on real handshakes over
memory BIOs: PSK over TLS 1.3 through the DTLS callback, beside the bridge's certificate."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

import dtlscerts
from bridge.core.auth import PresharedKey
from bridge.dtls import psk
from bridge.edge import tls as tls_edge
from bridge.edge.dtls import peer_credential
from bridge.settings import DtlsConfig
from dtlsclient import client_context, pump

KEY = b"k" * 16


class Inner:
    """The CoAP protocol under Twisted's TLS layer: the creator notes the PSK on it."""
    tls_connection = None
    psk_identity = None


class Outer:
    wrappedProtocol: Inner

    def __init__(self) -> None:
        self.wrappedProtocol = Inner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tls"))
    ca = dtlscerts.ca()
    cert, key = dtlscerts.issue("bridge", ca).write(directory, "bridge")
    return cert, key


class Handshake:
    """The bridge's TLS context (``reliable.psk`` as given, its certificate) against
    ``client``: whether it completed, the server's connection, the protocol under it."""

    def __init__(self, files, psk_on=True, **device):
        cert, key = files
        self.creator = tls_edge.TlsCreator(DtlsConfig(cert_file=cert, key_file=key, psk=psk_on),
                                           {"dev": KEY}.get)  # keeps the PSK callback
        outer = Outer()
        self.inner = outer.wrappedProtocol
        self.connection = self.creator.serverConnectionForTLS(outer)
        self.connection.set_accept_state()
        device_connection, self._keep = client(**device)
        self.done = pump(device_connection, self.connection)

    @property
    def cipher(self):
        return self.connection.get_cipher_name()


def client(suites=None, identity="dev", key=KEY):
    """A TLS 1.3 client like OpenSSL's own: its default suites (TLS_AES_256_GCM_SHA384
    first) unless ``suites``, offering an external PSK when ``identity`` is given."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE)
    keep = None
    if identity is not None:
        keep = client_context(psk=(identity, key))
        psk.lib.SSL_CTX_set_psk_client_callback(ctx._context, keep[1])
    if suites is not None:
        psk.set_tls13_suites(ctx, suites)
    connection = SSL.Connection(ctx, None)
    connection.set_connect_state()
    return connection, keep


def test_a_tls_1_3_psk_is_taken_beside_the_bridges_certificate(files):
    shake = Handshake(files)
    assert shake.done and shake.connection.get_protocol_version_name() == "TLSv1.3"
    # SHA-256, the PSK's: OpenSSL's client order, less TLS_AES_256_GCM_SHA384
    assert shake.cipher == "TLS_CHACHA20_POLY1305_SHA256"
    assert shake.inner.psk_identity == "dev" and psk.session_reused(shake.connection)
    assert peer_credential(shake.connection, shake.inner.psk_identity) == PresharedKey("dev")


def test_the_devices_order_chooses_between_the_sha_256_suites(files):
    shake = Handshake(files, suites=b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:"
                                    b"TLS_CHACHA20_POLY1305_SHA256")
    assert shake.done and shake.cipher == "TLS_AES_128_GCM_SHA256"
    assert shake.inner.psk_identity == "dev"


def test_a_wrong_tls_1_3_psk_fails_the_handshake(files):
    assert not Handshake(files, key=b"j" * 16).done


def test_without_a_psk_the_certificate_handshake_is_tls_1_3(files):
    shake = Handshake(files, identity=None)
    assert shake.done and shake.connection.get_protocol_version_name() == "TLSv1.3"
    assert shake.inner.psk_identity is None and not psk.session_reused(shake.connection)


def test_with_psk_off_tls_1_3_has_openssls_suites(files):
    shake = Handshake(files, psk_on=False, identity=None)
    assert shake.done and shake.cipher == "TLS_AES_256_GCM_SHA384"


def test_tls_1_3_suites_are_set_through_the_bindings_where_pyopenssl_has_no_setter():
    class Older(SSL.Context):  # pyOpenSSL 25.1 (the PyPy 3.9 install) has no such method
        def __getattribute__(self, name):
            if name == "set_tls13_ciphersuites":
                raise AttributeError(name)
            return super().__getattribute__(name)

    ctx = Older(SSL.TLS_SERVER_METHOD)
    psk.set_tls13_suites(ctx, b"TLS_CHACHA20_POLY1305_SHA256")
    connection = SSL.Connection(ctx, None)
    names = connection.get_cipher_list()
    assert [n for n in names if n.startswith("TLS_")] == ["TLS_CHACHA20_POLY1305_SHA256"]
    with pytest.raises(SSL.Error):
        psk.set_tls13_suites(ctx, b"NO_SUCH_SUITE")
