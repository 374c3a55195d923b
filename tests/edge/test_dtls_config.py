"""The dtls: section: files read and checked by OpenSSL, every problem listed at once."""

from __future__ import annotations

import os

import pytest

import dtlscerts
from bridge.settings import DTLS_CIPHERS, ConfigError
from bridge.startup_checks import load, load_text


def problems(text, env=None):
    with pytest.raises(ConfigError) as info:
        load_text(text, env or {})
    return info.value.problems


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dtlsconf"))
    ca = dtlscerts.ca()
    ec_cert, ec_key = dtlscerts.issue("bridge-ec", ca).write(d, "ec")
    rsa_cert, rsa_key = dtlscerts.issue("bridge-rsa", ca, kind="rsa").write(d, "rsa")
    ca_path = os.path.join(d, "ca.pem")
    with open(ca_path, "wb") as handle:
        handle.write(ca.pem())
    junk = os.path.join(d, "junk.pem")
    with open(junk, "w") as handle:
        handle.write("not a certificate\n")
    return {"ec": (ec_cert, ec_key), "rsa": (rsa_cert, rsa_key), "ca": ca_path, "junk": junk,
            "dir": d}


def dtls(**keys):
    return "dtls:\n" + "".join("  %s: %s\n" % (k, v) for k, v in keys.items())


def test_dtls_is_off_by_default_on_5684():
    config = load(None, {})
    assert not config.dtls.enabled and config.dtls.bind_port == 5684
    shipped = load(os.path.join(os.path.dirname(__file__), "..", "..", "conf",
                                "coapbridge.yaml"), {})
    assert shipped.dtls == config.dtls


def test_environment_turns_it_on_with_files(files):
    cert, key = files["ec"]
    config = load(None, {"COAP_DTLS_ENABLED": "true", "COAP_DTLS_CERT_FILE": cert,
                         "COAP_DTLS_KEY_FILE": key, "COAP_DTLS_CA_FILE": files["ca"],
                         "COAP_DTLS_BIND_PORT": "15684"})
    assert config.dtls.enabled and config.dtls.cert_file == cert
    assert config.dtls.bind_port == 15684


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_rsa_and_ecdsa_bridge_keys_load(files, kind):
    cert, key = files[kind]
    assert load_text(dtls(enabled="true", cert_file=cert, key_file=key,
                          ca_file=files["ca"]), {}).dtls.enabled


def test_missing_unreadable_mismatched_and_malformed_files_are_each_one_line(files):
    assert problems(dtls(enabled="true", cert_file="/nonexistent/c.pem",
                         key_file=files["ec"][1])) == [
        "dtls.cert_file: cannot read /nonexistent/c.pem"]
    mismatch = problems(dtls(enabled="true", cert_file=files["ec"][0],
                             key_file=files["rsa"][1]))
    assert len(mismatch) == 1 and "does not match dtls.cert_file" in mismatch[0]
    bad_cert = problems(dtls(enabled="true", cert_file=files["junk"], key_file=files["ec"][1]))
    assert len(bad_cert) == 1 and "is not a PEM certificate chain" in bad_cert[0]
    bad_ca = problems(dtls(enabled="true", cert_file=files["ec"][0], key_file=files["ec"][1],
                           ca_file=files["junk"]))
    assert len(bad_ca) == 1 and "holds no PEM certificate" in bad_ca[0]


def test_no_way_to_authenticate_and_other_problems_come_together(files):
    found = problems(dtls(enabled="true", psk="false", mtu=100, ca_file=files["ca"])
                     + "coap:\n  bind_port: 0\n")
    assert any("no way to authenticate" in p for p in found)
    assert any(p.startswith("dtls.mtu:") for p in found)
    assert any(p.startswith("dtls.ca_file: device certificates need") for p in found)
    assert any(p.startswith("coap.bind_port") for p in found)


def test_a_cipher_list_openssl_refuses(files):
    found = problems(dtls(enabled="true", ciphers="NOTHING-REAL"))
    assert len(found) == 1 and found[0].startswith("dtls.ciphers:")


def test_a_cryptography_without_the_functions_the_server_calls_is_named_at_start(
        files, monkeypatch):
    from bridge.dtls import bindings
    monkeypatch.setattr(bindings, "MISSING", ("DTLSv1_listen",))
    cert, key = files["ec"]
    found = problems(dtls(enabled="true", cert_file=cert, key_file=key))
    assert len(found) == 1 and found[0].startswith("dtls: cryptography ")
    assert "lack DTLSv1_listen" in found[0]


def test_off_means_not_checked():
    assert not load_text(dtls(enabled="false", cert_file="/nonexistent"), {}).dtls.enabled


@pytest.mark.parametrize("coap_address,dtls_address,clash", [
    ("0.0.0.0", "", True),            # the default: DTLS on the CoAP address
    ("0.0.0.0", "127.0.0.1", True),   # the wildcard takes that address's datagrams too
    ("::", "127.0.0.1", True),        # dual stack
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.2", False),
    ("0.0.0.0", "::1", False),        # another family
])
def test_dtls_on_the_coap_port_of_an_overlapping_address_is_a_problem(files, coap_address,
                                                                     dtls_address, clash):
    cert, key = files["ec"]
    text = dtls(enabled="true", cert_file=cert, key_file=key, bind_port=5683,
                bind_address='"%s"' % dtls_address) + \
        'coap:\n  bind_address: "%s"\n  bind_port: 5683\n' % coap_address
    if clash:
        found = problems(text)
        assert len(found) == 1 and found[0].startswith(
            "dtls.bind_port: 5683 is coap.bind_port too"), found
    else:
        assert load_text(text, {}).dtls.bind_port == 5683


def test_a_dtls_port_clash_is_listed_with_the_other_problems(files):
    found = problems(dtls(enabled="true", psk="false", bind_port=5683)
                     + "coap:\n  bind_port: 5683\n")
    assert any("no way to authenticate" in p for p in found)
    assert any(p.startswith("dtls.bind_port: 5683 is coap.bind_port too") for p in found)


def test_the_cipher_list_has_its_environment_name_in_the_shipped_file():
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}).dtls.ciphers == DTLS_CIPHERS
    config = load(shipped, {"COAP_DTLS_CIPHERS": "PSK-AES128-CCM8:@SECLEVEL=0"})
    assert config.dtls.ciphers == "PSK-AES128-CCM8:@SECLEVEL=0"


# -- ThingsBoard's names, the key password, the key inside the certificate's file ----------

@pytest.fixture(scope="module")
def encrypted(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    d = str(tmp_path_factory.mktemp("dtlskeys"))
    issued = dtlscerts.issue("bridge-enc", dtlscerts.ca())
    cert, key = issued.write(d, "plain")
    locked = os.path.join(d, "locked.key")
    with open(locked, "wb") as handle:
        handle.write(issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret")))
    both = os.path.join(d, "both.pem")
    with open(both, "wb") as handle:
        handle.write(issued.pem() + issued.key_pem())
    return {"cert": cert, "key": key, "locked": locked, "both": both}


def test_thingsboard_s_variables_configure_an_encrypted_key_that_the_bridge_opens(encrypted):
    from bridge.edge import dtls as dtls_edge
    env = {"COAP_DTLS_ENABLED": "true", "COAP_DTLS_CREDENTIALS_TYPE": "PEM",
           "COAP_DTLS_PEM_CERT": encrypted["cert"], "COAP_DTLS_PEM_KEY": encrypted["locked"],
           "COAP_DTLS_PEM_KEY_PASSWORD": "s3cret"}
    config = load(None, env)
    assert (config.dtls.cert_file, config.dtls.key_file, config.dtls.key_password) == (
        encrypted["cert"], encrypted["locked"], "s3cret")
    # the transport reads the key (dtls_keys) and builds its server's context with it
    from twisted.internet.task import Clock
    from bridge.edge import coap as coap_edge
    from bridge.edge.datagram import DatagramDriver
    clock = Clock()
    transport = dtls_edge.DtlsTransport(config.dtls, DatagramDriver(
        lambda request: None, clock, coap_edge.datagram_settings(0.5, 247)), clock,
        lambda identity: None)
    context = transport.server.context
    assert context is not None  # the certificate and its decrypted key are in the context


def test_an_encrypted_key_without_its_password_is_one_line(encrypted):
    base = dtls(enabled="true", cert_file=encrypted["cert"], key_file=encrypted["locked"])
    assert problems(base) == ["dtls.key_file: %s is encrypted and dtls.key_password "
                              "(COAP_DTLS_PEM_KEY_PASSWORD) is empty" % encrypted["locked"]]
    [wrong] = problems(base + "  key_password: guessed\n")
    assert wrong.startswith("dtls.key_file: %s is not a private key dtls.key_password opens"
                            % encrypted["locked"])
    [plain] = problems(dtls(enabled="true", cert_file=encrypted["cert"],
                            key_file=encrypted["key"], key_password="s3cret"))
    assert plain.endswith("is not encrypted: leave dtls.key_password empty")


def test_the_key_may_follow_the_certificate_in_one_file_as_thingsboard_allows(encrypted):
    assert load(None, {"COAP_DTLS_ENABLED": "true",
                       "COAP_DTLS_PEM_CERT": encrypted["both"]}).dtls.cert_file
    assert problems(dtls(enabled="true", cert_file=encrypted["cert"])) == [
        "dtls.key_file: %s holds no PEM private key" % encrypted["cert"]]
