"""Provisioning requests in parallel: different names at once up to a bound, one name in turn;
a protobuf request answered in protobuf."""

import shutil

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core import codes
from bridge.core.provision import parse_request
from bridge.edge import protoc
from bridge.edge.provision import Provisioner
from bridge.glue.lookup import RegistryView
from bridge.registry import Registry


class SlowPlatform(Provisioner):
    """The platform's side replaced by Deferreds the test fires (no MQTT session)."""

    def __init__(self, max_concurrent=8):
        cfg = startup_checks.load_text("provisioning: {max_concurrent: %d}" % max_concurrent, {})
        self.answers = []
        super().__init__(cfg, Clock(), lambda: None,
                         lambda ref, code, body, max_age=None: self.answers.append(
                             (ref, code, max_age)))
        self.asked = []  # (ref, name, Deferred) sent to the platform, in order

    def _upstream(self, ref, request):
        d = defer.Deferred()
        d.addCallback(lambda _: self.answer(ref, codes.CREATED, b"{}"))
        self.asked.append((ref, request.device_name, d))
        return d


def request(name):
    body = b'{"deviceName": "%s", "provisionDeviceKey": "k", "provisionDeviceSecret": "s"}'
    return parse_request(body % name.encode(), 32)


def test_different_names_go_to_the_platform_at_once_and_one_name_waits_for_its_turn():
    platform = SlowPlatform()
    for ref, name in enumerate(["A", "B", "A", "C"], 1):
        platform.handle(ref, request(name))
    assert [(ref, name) for ref, name, _ in platform.asked] == [(1, "A"), (2, "B"), (4, "C")]
    platform.asked[1][2].callback(None)  # B answered: the second A still waits for the first
    assert len(platform.asked) == 3 and platform.answers == [(2, codes.CREATED, None)]
    platform.asked[0][2].callback(None)
    assert [(ref, name) for ref, name, _ in platform.asked[3:]] == [(3, "A")]
    platform.asked[3][2].callback(None)
    platform.asked[2][2].callback(None)
    assert sorted(ref for ref, _, _ in platform.answers) == [1, 2, 3, 4]
    assert platform.in_progress == 0 and platform.names == {}


def test_past_max_concurrent_requests_get_5_03_with_max_age_until_one_finishes():
    platform = SlowPlatform(max_concurrent=2)
    platform.handle(1, request("A"))
    platform.handle(2, request("A"))  # waiting for its name counts too
    platform.handle(3, request("B"))
    timeout = platform.config.provisioning.timeout
    assert platform.answers == [(3, codes.SERVICE_UNAVAILABLE, int(timeout))]
    assert platform.refused == 1
    platform.asked[0][2].callback(None)  # the first A done; the second goes to the platform
    platform.handle(4, request("B"))  # a slot is free again
    platform.handle(5, request("C"))
    assert [name for _, name, _ in platform.asked] == ["A", "A", "B"]
    assert platform.answers[-1] == (5, codes.SERVICE_UNAVAILABLE, int(timeout))
    assert platform.refused == 2


def test_local_provisioning_with_the_shared_registry_lost_is_5_03_and_asked_again_later():
    from bridge.registry import RegistryUnavailable
    cfg = startup_checks.load_text(
        "provisioning: {mode: local, profiles: [{key: k, secret: s, device_type: meter}]}", {})
    answers, writes = [], []

    def write(method, *args):
        writes.append((method,) + args)
        return defer.fail(RegistryUnavailable("the device registry db is unreachable: gone"))
    provisioner = Provisioner(cfg, Clock(), write, lambda ref, code, body, max_age=None:
                              answers.append((ref, code, max_age)))
    provisioner.handle(1, request("A"))
    assert writes and writes[0][:2] == ("provision", "A")
    assert answers == [(1, codes.SERVICE_UNAVAILABLE, int(cfg.provisioning.timeout))]
    assert provisioner.in_progress == 0


@pytest.mark.skipif(shutil.which("protoc") is None,
                    reason="protoc missing (Debian: protobuf-compiler)")
def test_a_protobuf_request_is_answered_in_protobuf_on_every_path():
    tb = protoc.fixed_messages()
    answers = []

    def answer(ref, code, body, max_age=None, content_format=codes.APPLICATION_JSON):
        answers.append((ref, code, body, content_format))

    class Platform(Provisioner):
        """The platform's side: ThingsBoard's JSON answer at once (no MQTT session)."""

        def _upstream(self, ref, request):
            self.answer(ref, codes.CREATED, b'{"credentialsValue":"tok5",'
                                            b'"credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}')
    upstream = Platform(startup_checks.load_text("{}", {}), Clock(), lambda: None, answer,
                        fixed=tb)
    local = Provisioner(startup_checks.load_text(
        "provisioning: {mode: local, profiles: [{key: k, secret: s, device_type: meter}]}", {}),
        Clock(), lambda: None, answer, fixed=tb)
    msg = tb.ProvisionDeviceRequestMsg(deviceName="Meter 5")
    msg.provisionDeviceCredentialsMsg.provisionDeviceKey = "k"
    msg.provisionDeviceCredentialsMsg.provisionDeviceSecret = "wrong"
    upstream.handle(1, parse_request(msg.SerializeToString(), 32, tb))
    local.handle(2, parse_request(msg.SerializeToString(), 32, tb))  # the bridge's own NOT_FOUND
    local.handle(3, parse_request(  # JSON, with a wrong secret: a JSON answer
        b'{"deviceName": "Meter 6", "provisionDeviceKey": "k", "provisionDeviceSecret": "x"}',
        32, tb))
    (_, code1, body1, cf1), (_, code2, body2, cf2), (_, code3, body3, cf3) = answers
    ok = tb.ProvisionDeviceResponseMsg.FromString(body1)
    assert (code1, cf1, ok.status, ok.credentialsValue) == (
        codes.CREATED, codes.OCTET_STREAM, 1, "tok5")  # SUCCESS
    refused = tb.ProvisionDeviceResponseMsg.FromString(body2)
    assert (code2, cf2, refused.status) == (codes.BAD_REQUEST, codes.OCTET_STREAM, 2)
    assert (code3, cf3) == (codes.BAD_REQUEST, codes.APPLICATION_JSON)
    assert b"Provision data was not found!" in body3
    assert not upstream.protobuf_refs and not local.protobuf_refs


def test_a_device_provisioned_locally_is_known_to_its_next_request_in_the_same_turn(tmp_path):
    """The registry's copy the core reads is refreshed once per reactor turn; a device that
    sends right after its provisioning reply may be read in the same turn (it got 4.01)."""
    cfg = startup_checks.load_text(
        "provisioning: {mode: local, profiles: [{key: k, secret: s, device_type: meter}]}", {})
    view = RegistryView(Clock())
    view.attach(Registry(str(tmp_path / "registry.sqlite3")))
    answers = []
    provisioner = Provisioner(cfg, Clock(), view.write,
                              lambda ref, code, body, max_age=None: answers.append((ref, code)))
    view.refresh()  # the turn's first request: the copy is read, not again in this turn
    body = b'{"deviceName": "M", "provisionDeviceKey": "k", "provisionDeviceSecret": "s", ' \
           b'"token": "mtoken"}'
    provisioner.handle(1, parse_request(body, 32))
    assert answers == [(1, codes.CREATED)]
    view.refresh()  # the next request, in the same turn
    assert view.get("mtoken") is not None and view.get("mtoken").name == "M"
