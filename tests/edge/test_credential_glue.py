"""DTLS credentials between the CoAP edge, the registry and the core (issue #14), with a
session object standing in for the DTLS transport's peer (no sockets: a Clock as reactor):
the credential reaches the core, X.509 auto-registration, ``credential_gone``."""

import sqlite3

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core import codes
from bridge.core.actions import Device
from bridge.core.auth import Certificate, PresharedKey
from bridge.edge.outbox import Outbox
from bridge.glue.bridge import Bridge
from bridge.registry import Registry
from coaplayer import incoming
from outboxes import stored

SHA3_A, SHA3_X = "a" * 64, "b" * 64


class Session:
    """What the DTLS transport hands the CoAP endpoint as a peer (see CONTRACT-dtls.md)."""

    def __init__(self, credential, address=("10.0.0.9", 40000)):
        self.key = ("dtls", address)
        self.address = address
        self.credential = credential


def message(remote, path=(b"api", b"v1", b"telemetry"), code=codes.POST, mid=1):
    return incoming(remote, code, path, b'{"t": 1}', mid=mid)


def make_bridge(tmp_path, yaml="", clock=None):
    clock = clock or Clock()
    config = startup_checks.load_text(yaml or "{}", {})  # the shipped limits
    bridge = Bridge(config, clock)
    bridge.registry_view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    bridge.outbox_commit.attach(Outbox(str(tmp_path / "outbox.sqlite3")))
    return bridge, clock


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def answer_code(d):
    assert d.called
    return d.result.message.code


@pytest.mark.parametrize("credential", [Certificate(SHA3_A), PresharedKey("id-a")])
def test_a_token_less_uplink_over_a_session_is_stored_and_answered(tmp_path, credential):
    bridge, clock = make_bridge(tmp_path)
    bridge.registry.add("Dev A", None, "thermo", cert_sha3=SHA3_A, psk_identity="id-a",
                        psk_key=b"k")
    d = bridge.handle_coap(message(Session(credential)))
    assert not d.called  # kept for the turn's bulk, like a token uplink
    clock.advance(0)
    assert answer_code(d) == codes.CREATED
    assert [entry[1] for entry in stored(bridge.outbox)] == ["Dev A"]
    unknown = bridge.handle_coap(message(Session(PresharedKey("nobody")), mid=5))
    clock.advance(0)
    assert answer_code(unknown) == codes.UNAUTHORIZED
    assert bridge.core.stats["unknown_credential"] == 1
    # a token form over the same session goes through the credential check (not the bulk
    # path, which knows tokens only): a token of another device is 4.01
    bridge.registry.add("Dev B", "tokB", "meter")
    d = bridge.handle_coap(message(Session(credential), (b"api", b"v1", b"tokB", b"telemetry"),
                                   mid=2))
    clock.advance(0)
    assert answer_code(d) == codes.UNAUTHORIZED


def test_over_plain_udp_the_token_less_form_is_4_01(tmp_path):
    bridge, clock = make_bridge(tmp_path)
    bridge.registry.add("Dev A", "tokA", "thermo", cert_sha3=SHA3_A)
    d = bridge.handle_coap(message(("10.0.0.9", 5683)))
    clock.advance(0)
    assert answer_code(d) == codes.UNAUTHORIZED


# -- X.509 auto-registration ------------------------------------------------------------------

AUTO = "dtls: {x509: {auto_register: true, device_type: camera}}\n"


def test_an_unknown_verified_certificate_registers_its_cn_once(tmp_path, logged):
    bridge, clock = make_bridge(tmp_path, AUTO)
    session = Session(Certificate(SHA3_X, cn="Cam 7"))
    answers = [bridge.handle_coap(message(session, mid=mid)) for mid in (1, 2, 3)]  # one turn
    clock.advance(0)
    assert [answer_code(d) for d in answers] == [codes.CREATED] * 3
    [entry] = bridge.registry.entries()
    assert (entry.name, entry.type, entry.token, entry.cert_sha3) == ("Cam 7", "camera", None,
                                                                       SHA3_X)
    registered = [e for e in logged if "Registered device" in e.get("log_format", "")]
    assert len(registered) == 1 and registered[0]["device"] == "Cam 7"
    assert bridge.metrics.values()["devices_auto_registered_total"][2] == 1


def test_the_cn_regex_group_names_the_device_and_a_cn_that_does_not_match_is_4_01(tmp_path,
                                                                                  logged):
    bridge, clock = make_bridge(tmp_path, "dtls: {x509: {auto_register: true, "
                                          "cn_regex: 'device-(\\w+)\\.example'}}\n")
    d = bridge.handle_coap(message(Session(Certificate(SHA3_X, cn="device-k9.example"))))
    clock.advance(0)
    assert answer_code(d) == codes.CREATED
    assert [(e.name, e.type) for e in bridge.registry.entries()] == [("k9", "default")]
    other = Session(Certificate("c" * 64, cn="someone-else"))
    answers = [bridge.handle_coap(message(other, mid=mid)) for mid in (2, 3)]
    clock.advance(0)
    assert [answer_code(d) for d in answers] == [codes.UNAUTHORIZED] * 2
    refused = [e for e in logged if "not registered" in e.get("log_format", "")]
    assert len(refused) == 1 and "does not match" in refused[0]["reason"]  # logged once
    assert bridge.core.stats["unknown_credential"] == 2


def test_a_cn_naming_an_existing_device_registers_nothing(tmp_path, logged):
    bridge, clock = make_bridge(tmp_path, AUTO)
    bridge.registry.add("Cam 7", "tok7", "camera")
    d = bridge.handle_coap(message(Session(Certificate(SHA3_X, cn="Cam 7"))))
    clock.advance(0)
    assert answer_code(d) == codes.UNAUTHORIZED
    assert [e.cert_sha3 for e in bridge.registry.entries()] == [None]
    [refused] = [e for e in logged if "not registered" in e.get("log_format", "")]
    assert "already exists" in refused["reason"]


@pytest.mark.parametrize("cn", ["Cam\n7 [coapbridge.bridge#info] forged line", "\x1b[2JCam",
                                "C" * 300])
def test_a_cn_that_is_no_valid_name_registers_nothing_and_is_logged_escaped(tmp_path, logged,
                                                                          cn):
    # before: the CN became the device's name as it was, newlines and escapes included
    bridge, clock = make_bridge(tmp_path, AUTO)
    d = bridge.handle_coap(message(Session(Certificate(SHA3_X, cn=cn))))
    clock.advance(0)
    assert answer_code(d) == codes.UNAUTHORIZED
    assert bridge.registry.entries() == []
    [refused] = [e for e in logged if "not registered" in e.get("log_format", "")]
    assert "device name must" in refused["reason"]
    assert "\n" not in refused["cn"] and "\x1b" not in refused["cn"]


def test_another_bridge_registering_the_same_certificate_first_is_no_error(tmp_path, logged):
    bridge, clock = make_bridge(tmp_path, AUTO)
    bridge.registry_view.refresh()
    other = Registry(str(tmp_path / "registry.sqlite3"))  # the other bridge wins the race
    other.add("Cam 7", None, "camera", cert_sha3=SHA3_X)
    other.close()
    bridge.auto_registration.ensure(Certificate(SHA3_X, cn="Cam 7"))  # its view was stale
    assert bridge.registry_view.certificates == {SHA3_X: Device("Cam 7", "camera")}
    assert not [e for e in logged if "not registered" in e.get("log_format", "")]


def test_without_auto_register_an_unknown_certificate_is_4_01(tmp_path):
    bridge, clock = make_bridge(tmp_path)
    d = bridge.handle_coap(message(Session(Certificate(SHA3_X, cn="Cam 7"))))
    clock.advance(0)
    assert answer_code(d) == codes.UNAUTHORIZED and bridge.registry.entries() == []


# -- ending sessions after a registry change ------------------------------------------------------

def test_credential_gone_after_removal_or_a_new_key(tmp_path):
    bridge, clock = make_bridge(tmp_path)
    view = bridge.registry_view
    changes = []
    view.on_change.append(lambda: changes.append(len(view.certificates) + len(view.psk)))
    bridge.registry.add("Cert A", None, "thermo", cert_sha3=SHA3_A)
    bridge.registry.add("Psk A", None, "thermo", psk_identity="id-a", psk_key=b"old")
    view.refresh()
    assert changes == []  # announced in a turn of its own
    clock.advance(0)
    cert, psk = Certificate(SHA3_A), PresharedKey("id-a")
    assert changes == [2]
    assert view.psk_key("id-a") == b"old" and view.psk_key("nobody") is None
    assert not view.credential_gone(cert) and not view.credential_gone(psk, b"old")
    assert not view.credential_gone(None)  # a session without a client credential
    with sqlite3.connect(str(tmp_path / "registry.sqlite3")) as db:  # a new key
        db.execute("UPDATE devices SET psk_key = ? WHERE name = 'Psk A'", (b"new",))
    clock.advance(0)
    bridge.tick()  # the timer looks at the file too: no request is needed
    clock.advance(0)
    assert changes == [2, 2]
    assert view.credential_gone(psk, b"old") and not view.credential_gone(psk, b"new")
    assert not view.credential_gone(psk)  # no key given: only removal counts
    bridge.registry.mark_deleted("Cert A")
    bridge.registry.remove("Psk A")
    clock.advance(0)
    view.refresh()
    clock.advance(0)
    assert changes == [2, 2, 0]
    assert view.credential_gone(cert) and view.credential_gone(psk)


def test_requests_wait_for_a_registration_written_off_the_reactor(tmp_path, logged):
    """A registry whose writes take a while (the PostgreSQL one: the view's ``write`` is a
    Deferred): every request with the new certificate waits for the one write."""
    from twisted.internet import defer
    bridge, clock = make_bridge(tmp_path, AUTO)
    view, writes = bridge.registry_view, []

    def write(method, *args, **kwargs):
        d = defer.Deferred()
        writes.append((d, lambda: getattr(view.registry, method)(*args, **kwargs)))
        return d
    view.write = write
    session = Session(Certificate(SHA3_X, cn="Cam 7"))
    answers = [bridge.handle_coap(message(session, mid=mid)) for mid in (1, 2)]
    clock.advance(0)
    assert len(writes) == 1 and not any(d.called for d in answers)
    d, run = writes[0]
    d.callback(run())  # the write is done
    clock.advance(0)
    assert [answer_code(a) for a in answers] == [codes.CREATED] * 2
    assert [(e.name, e.cert_sha3) for e in bridge.registry.entries()] == [("Cam 7", SHA3_X)]
    later = bridge.handle_coap(message(session, mid=3))  # registered: no write, no wait
    clock.advance(0)
    assert answer_code(later) == codes.CREATED and len(writes) == 1


def test_a_registration_counts_at_once_though_a_shared_registry_tells_of_it_later(
        tmp_path, logged):
    """PostgreSQL: the write is done but its NOTIFY is not in yet when the waiting requests
    go on; they must not get 4.01, nor the next request write (and be refused) again."""
    from twisted.internet import defer
    bridge, clock = make_bridge(tmp_path, AUTO)
    view, writes = bridge.registry_view, []
    view.write = lambda method, *args, **kwargs: writes.append(method) or defer.succeed(None)
    session = Session(Certificate(SHA3_X, cn="Cam 7"))
    first = bridge.handle_coap(message(session, mid=1))
    clock.advance(0)
    assert answer_code(first) == codes.CREATED and view.certificates[SHA3_X].name == "Cam 7"
    second = bridge.handle_coap(message(session, mid=2))
    clock.advance(0)
    assert answer_code(second) == codes.CREATED and writes == ["add"]
    assert not [e for e in logged if "not registered" in e.get("log_format", "")]
