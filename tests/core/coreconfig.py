"""The configuration the core tests run with, stated once.

``core_config(**flat)`` builds a ``Config`` from flat names (the core's old settings,
e.g. ``puback_timeout=10, max_batch=100``). Its baseline is not the shipped defaults: a
core test turns off what it does not test (no request budgets, one uplink per publish)
and names what it needs, so ``CORE_TEST_DEFAULTS`` are what these tests were written for.
"""

import dataclasses

from bridge.settings import Config

# flat name -> (section, field) of bridge.settings.Config
WHERE = {
    "puback_timeout": ("mqtt", "puback_timeout"),
    "max_packet_size": ("mqtt", "max_packet_size"),
    "window": ("mqtt", "max_inflight"),
    "idle_timeout": ("devices", "idle_timeout"),
    "request_timeout": ("platform", "request_timeout"),
    "rpc_queue_size": ("platform", "rpc_queue_size"),
    "rpc_queue_ttl": ("platform", "rpc_queue_ttl"),
    "client_rpc_method": ("platform", "client_rpc_method"),
    "max_observers": ("coap", "max_observers"),
    "con_interval": ("coap", "con_notification_interval"),
    "max_batch": ("outbox", "max_batch"),
    "outbox_max_entries": ("outbox", "max_entries"),
    "outbox_max_bytes": ("outbox", "max_bytes"),
    "outbox_max_age": ("outbox", "max_age"),
    "device_rate": ("limits", "device_rate"),
    "device_burst": ("limits", "device_burst"),
    "peer_rate": ("limits", "peer_rate"),
    "peer_burst": ("limits", "peer_burst"),
    "download_rate": ("limits", "download_rate"),
    "download_burst": ("limits", "download_burst"),
    "json_max_depth": ("limits", "json_max_depth"),
    "provision_rate": ("provisioning", "peer_rate"),
    "provision_burst": ("provisioning", "peer_burst"),
}

CORE_TEST_DEFAULTS = dict(
    max_batch=1,  # one uplink per publish unless a test batches
    device_rate=0.0, peer_rate=0.0, peer_burst=50.0, provision_rate=0.0,  # no budgets
    download_rate=0.0,
)


def core_config(mqtt5=True, **flat):
    """A ``Config`` with ``CORE_TEST_DEFAULTS`` and ``flat`` on top (an unknown name is a
    TypeError, so a test cannot set what the core does not read)."""
    values = dict(CORE_TEST_DEFAULTS, **flat)
    sections = {}
    for name, value in values.items():
        if name not in WHERE:
            raise TypeError("core_config: no setting %r" % name)
        section, key = WHERE[name]
        sections.setdefault(section, {})[key] = value
    sections.setdefault("mqtt", {})["protocol"] = "5" if mqtt5 else "3.1.1"
    config = Config()
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **changes)
        for section, changes in sections.items()})


def handled(core, request, now):
    """``core.on_request`` without the ``Authenticated`` marker it puts first for a request
    with a valid credential (tests/core/test_session.py tests the marker itself)."""
    from bridge.core.actions import Authenticated
    actions = core.on_request(request, now)
    if actions and type(actions[0]) is Authenticated:
        assert actions[0].ref == request.ref
        return actions[1:]
    return actions
