"""``provisioning:``: POST /api/v1/provision, relayed upstream or checked locally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from .schema import Problems, listing, setting


@dataclass(frozen=True)
class ProvisionProfileConfig:
    """One local provisioning profile (provisioning.mode local)."""
    key: str = setting("", "The provisioning key devices send (provisionDeviceKey).")
    secret: str = setting("", "The provisioning secret devices send "
                          "(provisionDeviceSecret).", secret="hidden")
    device_type: str = setting("", "Type of the devices provisioned with it.")
    strategy: str = setting(
        "create_new", "create_new: the name must not exist yet; pre_provisioned: only names "
        "added with `coapbridge devices add NAME --pre-provision`.",
        choices=("create_new", "pre_provisioned"))


@dataclass(frozen=True)
class ProvisioningConfig:
    """Provisioning (ThingsBoard's gateway API has none): relayed to the platform on a
    short-lived MQTT session, or checked against local profiles."""
    mode: str = setting(
        "upstream", "upstream: relayed to the platform's provisioning API (MQTT username "
        "provision); local: checked against provisioning.profiles, for platforms without "
        "provisioning.", choices=("upstream", "local"))
    timeout: float = setting(10.0, "Seconds to wait for the platform's answer; then 5.04.",
                             low=0, high=600, above=True, unit="s")
    max_concurrent: int = setting(
        8, "Requests handled at once, each on its own short-lived MQTT session; requests for "
        "one device name wait for each other and count here too. More get 5.03 with Max-Age. "
        "Behind a broker that passes /provision/response to every subscriber (not "
        "ThingsBoard), set 1.", low=1, high=1000)
    peer_rate: float = setting(1.0, "Provisioning requests per second per source address "
                               "(it needs no token); past them 4.29 with Max-Age. 0: no "
                               "limit.", low=0, high=1_000_000)
    peer_burst: float = setting(10.0, "Provisioning requests in a burst per source address.",
                                low=0, high=10_000_000, above=True)
    profiles: Tuple[ProvisionProfileConfig, ...] = listing(
        ProvisionProfileConfig, "Local mode's profiles: a list of {key, secret, device_type, "
        "strategy}. As a variable: the list as YAML or JSON text.")


def check(config: Any, problems: Problems) -> None:
    provisioning = config.provisioning
    for n, profile in enumerate(provisioning.profiles):
        where = "provisioning.profiles[%d]" % n
        for key in ("key", "secret", "device_type"):
            if not getattr(profile, key):
                problems.add("provisioning.profiles", "%s.%s: must not be empty" % (where, key))
    if provisioning.mode == "local" and not provisioning.profiles:
        problems.add("provisioning.profiles",
                     "provisioning.profiles: local mode needs at least one profile")
