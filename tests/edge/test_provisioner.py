"""Provisioning requests in parallel: different names at once up to a bound, one name in turn."""

from twisted.internet import defer
from twisted.internet.task import Clock

from bridge import config as config_module
from bridge.core import codes
from bridge.core.provision import parse_request
from bridge.edge.provision import Provisioner


class SlowPlatform(Provisioner):
    """The platform's side replaced by Deferreds the test fires (no MQTT session)."""

    def __init__(self, max_concurrent=8):
        cfg = config_module.load_text("provisioning: {max_concurrent: %d}" % max_concurrent, {})
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
    cfg = config_module.load_text(
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
