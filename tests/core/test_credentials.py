"""DTLS credentials in the core (issue #14): a request over a session that verified a
certificate or a PSK identity, with the token-less URL forms, a token that must agree,
unknown credentials, and package downloads for devices without a token. No sockets."""

import dataclasses
import json

import pytest

from bridge.core import codes
from bridge.core.actions import Device, Log, Publish, Reply, Request, ServePackage, Store, StoreMany
from bridge.core.auth import AccessToken, Certificate, CredentialLookups, PresharedKey
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled
from logtext import text

NOW = 1_700_000_000.5
DEV_A = Device("Dev A", "thermo")
DEV_B = Device("Dev B", "meter")
DEV_C = Device("Cert C", "thermo")  # a certificate device without a token
PEER = ("10.0.0.1", 5684)
SHA3_A, SHA3_C = "a" * 64, "c" * 64
CERT_A, CERT_C = Certificate(SHA3_A, cn="Dev A"), Certificate(SHA3_C, cn="Cert C")
PSK_A = PresharedKey("tok")  # the identity defaults to the token
TOKENS = {"tok": DEV_A, "tokb": DEV_B}
CERTIFICATES = {SHA3_A: DEV_A, SHA3_C: DEV_C}
PSK = {"tok": DEV_A, "id-c": DEV_C}
FW = {"fw_title": "blinker", "fw_version": "2.0", "fw_size": 4096}


class Session:
    """A DTLS session as the transport hands it over (the core must not look at it)."""

    def __init__(self, credential):
        self.key = object()
        self.address = PEER
        self.credential = credential


def make_core(ota_source="upstream", **settings):
    config = core_config(puback_timeout=10, idle_timeout=600, request_timeout=10, **settings)
    config = dataclasses.replace(config, ota=dataclasses.replace(config.ota, source=ota_source))
    tokens = {name: token for token, name in ((t, d.name) for t, d in TOKENS.items())}
    core = GatewayCore(config, TOKENS.get, credentials=CredentialLookups(
        CERTIFICATES.get, PSK.get, tokens.get))
    core.on_link_up(NOW)
    return core


def request(ref, path, method=codes.GET, payload=b"", query=(), observe=None, credential=None):
    return Request(ref, method, tuple(path), payload, tuple(query), observe, b"\x01",
                   PEER if credential is None else Session(credential), None, credential)


def code(actions):
    [reply] = [a for a in actions if isinstance(a, Reply)]
    return codes.dotted(reply.code)


# (token form, token-less form, method, payload, query, observe)
FORMS = [
    (("api", "v1", "tok", "telemetry"), ("api", "v1", "telemetry"), codes.POST,
     b'{"t": 1}', (), None),
    (("api", "v1", "tok", "attributes"), ("api", "v1", "attributes"), codes.POST,
     b'{"a": 1}', (), None),
    (("api", "v1", "tok", "attributes"), ("api", "v1", "attributes"), codes.GET, b"",
     ("sharedKeys=fw_title",), None),
    (("api", "v1", "tok", "attributes"), ("api", "v1", "attributes"), codes.GET, b"", (), 0),
    (("api", "v1", "tok", "rpc"), ("api", "v1", "rpc"), codes.GET, b"", (), 0),
    (("api", "v1", "tok", "rpc", "7"), ("api", "v1", "rpc", "7"), codes.POST,
     b'{"ok": true}', (), None),
    (("api", "v1", "tok", "rpc"), ("api", "v1", "rpc"), codes.POST,
     b'{"method": "time", "params": {}}', (), None),
    (("api", "v1", "tok", "claim"), ("api", "v1", "claim"), codes.POST,
     b'{"secretKey": "s"}', (), None),
    (("fw", "tok"), ("fw",), codes.GET, b"", ("title=blinker", "version=2.0"), None),
    (("sw", "tok"), ("sw",), codes.GET, b"", (), None),
    (("api", "v1", "tok", "firmware"), ("api", "v1", "firmware"), codes.GET, b"",
     ("title=blinker", "version=2.0"), None),
    (("api", "v1", "tok", "software"), ("api", "v1", "software"), codes.GET, b"", (), None),
]


@pytest.mark.parametrize("credential", [CERT_A, PSK_A], ids=["x509", "psk"])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "%s %s" % (
    "GET" if f[2] == codes.GET else "POST", "/".join(f[1]) + ("?obs" if f[5] == 0 else "")))
def test_a_token_less_form_over_a_session_does_what_the_token_form_does(form, credential):
    token_path, path, method, payload, query, observe = form
    by_token = handled(make_core(), request(1, token_path, method, payload, query, observe),
                       NOW)
    by_session = handled(make_core(), request(1, path, method, payload, query, observe,
                                              credential), NOW)
    assert by_session == by_token
    assert by_token and not any(isinstance(a, Reply) and a.code == codes.UNAUTHORIZED
                                for a in by_token)
    # the same token in the path as well: the same device, the same answer
    with_token = handled(make_core(), request(1, token_path, method, payload, query, observe,
                                              credential), NOW)
    assert with_token == by_token


@pytest.mark.parametrize("credential", [CERT_A, PSK_A], ids=["x509", "psk"])
@pytest.mark.parametrize("token", ["tokb", "unknown"])
def test_a_token_naming_another_device_than_the_session_is_4_01(credential, token):
    core = make_core()
    for path in (("api", "v1", token, "telemetry"), ("fw", token)):
        actions = core.on_request(request(1, path, codes.POST if path[0] == "api" else codes.GET,
                                          b'{"t": 1}', credential=credential), NOW)
        assert code(actions) == "4.01"
        assert not any(isinstance(a, Log) for a in actions)
    assert core.stats["credential_mismatch"] == (2 if token == "tokb" else 0)


@pytest.mark.parametrize("credential", [Certificate("f" * 64, cn="x"), PresharedKey("who")])
def test_an_unknown_credential_is_4_01_counted_and_summed_up_once_a_minute(credential):
    core = make_core()
    for ref in range(1, 6):
        actions = core.on_request(request(ref, ("api", "v1", "telemetry"), codes.POST,
                                          b'{"t": 1}', credential=credential), NOW)
        assert code(actions) == "4.01" and not any(isinstance(a, Log) for a in actions)
    assert core.stats["unknown_credential"] == 5 and core.stats["unknown_token"] == 0
    [warning] = [a for a in core.on_tick(NOW + 61) if isinstance(a, Log)]
    assert text(warning).startswith("5 requests with an unknown DTLS credential")
    assert "10.0.0.1 (5)" in text(warning)  # by the session's address


def test_an_unregistered_certificate_leaves_the_token_in_the_path_to_authenticate():
    # ThingsBoard falls back to the URL's token for a certificate it does not know (a token
    # device with a factory certificate from the trusted CA); a PSK session's identity is
    # always known (an unknown one fails the handshake), and a known certificate must
    # still match the token (test above)
    core = make_core()
    factory = Certificate("f" * 64, cn="factory")
    actions = core.on_request(request(1, ("api", "v1", "tokb", "telemetry"), codes.POST,
                                      b'{"t": 1}', credential=factory), NOW)
    assert any(isinstance(a, (Store, StoreMany)) and "Dev B" in repr(a) for a in actions)
    assert core.stats["unknown_credential"] == 1 and core.stats["credential_mismatch"] == 0
    actions = core.on_request(request(2, ("api", "v1", "nope", "telemetry"), codes.POST,
                                      b'{"t": 1}', credential=factory), NOW)
    assert code(actions) == "4.01" and core.stats["unknown_token"] == 1


@pytest.mark.parametrize("path", [("api", "v1", "telemetry"), ("api", "v1", "rpc", "7"),
                                  ("fw",), ("api", "v1", "firmware")])
def test_without_a_credential_the_token_less_forms_stay_4_01(path):
    core = make_core()
    actions = core.on_request(request(1, path, codes.POST if "fw" not in path[:1] and
                                      "firmware" not in path else codes.GET, b"{}"), NOW)
    assert code(actions) == "4.01"
    # and the token forms over a DTLS session without a client credential work as over UDP
    actions = handled(core, request(2, ("api", "v1", "tok", "telemetry"), codes.POST,
                                    b'{"t": 1}'), NOW)
    assert actions and not any(isinstance(a, Reply) for a in actions)


def test_provisioning_needs_no_credential_over_a_session_either():
    core = make_core()
    actions = core.on_request(request(1, ("api", "v1", "provision"), codes.POST,
                                      b'{"provisionDeviceKey": "k", "provisionDeviceSecret": '
                                      b'"s", "deviceName": "n"}', credential=CERT_C), NOW)
    assert not any(isinstance(a, Reply) and a.code == codes.UNAUTHORIZED for a in actions)


# -- packages for devices without a token -------------------------------------------------------

def fetch_package(core, ref, credential, path=("fw",)):
    """A package request, with the platform answering the attribute fetch with FW."""
    seen, todo = [], list(core.on_request(request(ref, path, credential=credential), NOW))
    while todo:
        action = todo.pop(0)
        seen.append(action)
        if isinstance(action, Publish):
            todo += core.on_published(action.ref, 0, NOW)
            if action.topic == "v1/gateway/attributes/request":
                body = json.loads(action.payload)
                answer = {"id": body["id"], "device": body["device"],
                          "values": {k: v for k, v in FW.items() if k in body["keys"]}}
                todo += core.on_message("v1/gateway/attributes/response",
                                        json.dumps(answer).encode(), NOW)
    return seen


@pytest.mark.parametrize("credential", [CERT_C, PresharedKey("id-c")], ids=["x509", "psk"])
def test_upstream_packages_for_a_device_without_a_token_are_4_04_logged_once(credential):
    core = make_core()
    first = fetch_package(core, 1, credential)
    assert code(first) == "4.04" and not any(isinstance(a, ServePackage) for a in first)
    [reply] = [a for a in first if isinstance(a, Reply)]
    assert b"access token" in reply.payload
    [log] = [a for a in first if isinstance(a, Log)]
    assert log.level == "warn" and log.fields == {"device": "Cert C"}
    assert "ota.source" in text(log)
    again = fetch_package(core, 2, credential, ("api", "v1", "software"))
    assert code(again) == "4.04" and not any(isinstance(a, Log) for a in again)


@pytest.mark.parametrize("credential", [CERT_C, PresharedKey("id-c")], ids=["x509", "psk"])
def test_the_directory_source_serves_a_device_without_a_token(credential):
    [serve] = [a for a in fetch_package(make_core("directory"), 1, credential)
               if isinstance(a, ServePackage)]
    assert serve.device == "Cert C" and serve.token is None


@pytest.mark.parametrize("credential", [CERT_A, PSK_A], ids=["x509", "psk"])
def test_upstream_packages_use_the_registered_token_of_a_credential_device(credential):
    [serve] = [a for a in fetch_package(make_core(), 1, credential)
               if isinstance(a, ServePackage)]
    assert serve.device == "Dev A" and serve.token == "tok"


def test_credential_values():
    assert AccessToken("t") != PresharedKey("t")
    assert Certificate(SHA3_A, cn="one") == Certificate(SHA3_A, cn="two")


@pytest.mark.parametrize("credential", [CERT_A, PSK_A], ids=["x509", "psk"])
def test_the_bulk_path_takes_a_credential_in_place_of_a_token(credential):
    core = make_core()
    session = Session(credential)
    actions = core.on_uplinks([(1, credential, "telemetry", b'{"t": 1}', session),
                               (2, "tok", "telemetry", b'{"t": 2}', PEER),
                               (3, PresharedKey("nobody"), "attributes", b'{"a": 1}', session)],
                              NOW)
    [store] = [a for a in actions if type(a).__name__ == "StoreMany"]
    assert [entry.device for entry in store.entries] == ["Dev A", "Dev A"]
    [refused] = [a for a in actions if isinstance(a, Reply)]
    assert refused.ref == 3 and codes.dotted(refused.code) == "4.01"
    assert core.stats["unknown_credential"] == 1
