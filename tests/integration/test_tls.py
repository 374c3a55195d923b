"""The gateway connection over TLS: server certificate and host name verified, client certificate optional."""

from __future__ import annotations

import datetime
import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import coapraw as raw
from conftest import BridgeProcess, Mosquitto, wait_until

pytestmark = pytest.mark.integration


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject, issuer_name, issuer_key, public_key, ca=False, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", _name("test CA"), ca_key, ca_key.public_key(), ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    good = _cert("broker", ca.subject, ca_key, server_key.public_key(),
                 sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    wrong = _cert("elsewhere", ca.subject, ca_key, server_key.public_key(),
                  sans=[x509.DNSName("elsewhere.example")])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("coapbridge", ca.subject, ca_key, client_key.public_key())
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("other CA", _name("other CA"), other_ca_key, other_ca_key.public_key(), ca=True)
    return {
        "ca": _write(d / "ca.pem", ca), "other_ca": _write(d / "other-ca.pem", other_ca),
        "server_cert": _write(d / "server.pem", good), "wrong_cert": _write(d / "wrong.pem", wrong),
        "server_key": _write(d / "server.key", key=server_key),
        "client_cert": _write(d / "client.pem", client),
        "client_key": _write(d / "client.key", key=client_key),
    }


class TlsMosquitto(Mosquitto):
    def __init__(self, workdir, pki, cert="server_cert", require_client=False):
        super().__init__(workdir)
        self.write_conf("cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate %s\n"
                        % (pki["ca"], pki[cert], pki["server_key"],
                           "true" if require_client else "false"))


@pytest.fixture
def run_tls(tmp_path, pki):
    made = []

    def make(mosquitto_kwargs, tls):
        broker = TlsMosquitto(str(tmp_path), pki, **mosquitto_kwargs).start()
        bridge = BridgeProcess(str(tmp_path), broker.port,
                               mqtt={"host": "localhost", "tls": dict(enabled=True, **tls)})
        bridge.add_device("Dev T", "tokenT")
        made.append((broker, bridge))
        bridge.start(wait_mqtt=False)
        return broker, bridge
    yield make
    for broker, bridge in made:
        bridge.stop()
        broker.kill()


def _post(bridge):
    client = raw.Client(bridge.host, bridge.coap_port)
    try:
        return client.exchange(raw.request(raw.POST, "/api/v1/tokenT/telemetry",
                                            json.dumps({"tls": 1}).encode())).code_str
    finally:
        client.close()


def test_verified_tls_connection_carries_uplinks(run_tls, pki):
    broker, bridge = run_tls({}, {"ca_file": pki["ca"]})
    bridge.wait_connected(1)
    assert _post(bridge) == "2.01"


def test_client_certificate_is_presented_when_configured(run_tls, pki):
    broker, bridge = run_tls({"require_client": True},
                             {"ca_file": pki["ca"], "cert_file": pki["client_cert"],
                              "key_file": pki["client_key"]})
    bridge.wait_connected(1)
    assert _post(bridge) == "2.01"


@pytest.mark.parametrize("mosquitto_kwargs, ca", [
    ({"cert": "wrong_cert"}, "ca"),      # right CA, wrong host name
    ({}, "other_ca"),                    # certificate from a CA we do not trust
], ids=["hostname-mismatch", "untrusted-ca"])
def test_unverifiable_broker_is_refused(run_tls, pki, mosquitto_kwargs, ca):
    broker, bridge = run_tls(mosquitto_kwargs, {"ca_file": pki[ca]})
    wait_until(lambda: "TLS handshake failed" in bridge.read_log(), 10, "the handshake to fail")
    assert "certificate verify failed" in bridge.read_log()
    assert bridge.connected_count() == 0
    assert _post(bridge) == "2.01"  # kept in the outbox, never sent to an unverified broker
    assert "Published" not in bridge.read_log()
