"""The top level: every section, the data directory and the logging settings.

``Config`` is what the rest of the bridge reads; ``check`` runs every section's own
checks (those between settings; each value's range or choice is checked as it is read).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Dict

from .. import registry_url
from ..registry_url import RegistryTarget
from . import (coap, devices, dtls, mqtt, ota, platform, profiles, provisioning, registry,
               reliable)
from .coap import CoapConfig
from .devices import DevicesConfig
from .dtls import DtlsConfig
from .health import HealthConfig
from .limits import LimitsConfig
from .metrics import MetricsConfig
from .mqtt import MqttConfig
from .ota import OtaConfig
from .outbox import OutboxConfig
from .platform import PlatformConfig
from .profiles import DeviceProfileConfig
from .provisioning import ProvisioningConfig
from .registry import RegistryConfig
from .reliable import ReliableConfig
from .schema import Problems, mapping, section, setting


@dataclass(frozen=True)
class Config:
    """coapbridge's configuration."""
    coap: CoapConfig = section(CoapConfig)
    mqtt: MqttConfig = section(MqttConfig)
    devices: DevicesConfig = section(DevicesConfig)
    platform: PlatformConfig = section(PlatformConfig)
    outbox: OutboxConfig = section(OutboxConfig)
    limits: LimitsConfig = section(LimitsConfig)
    provisioning: ProvisioningConfig = section(ProvisioningConfig)
    ota: OtaConfig = section(OtaConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    dtls: DtlsConfig = section(DtlsConfig)
    reliable: ReliableConfig = section(ReliableConfig)
    registry: RegistryConfig = section(RegistryConfig)
    device_profiles: Dict[str, DeviceProfileConfig] = mapping(
        DeviceProfileConfig, "Payload format per device type (the type `coapbridge devices "
        "add --type` records): type -> its profile. A type with no entry speaks JSON. As a "
        "variable: the mapping as YAML or JSON text, e.g. {\"sensor\": "
        "{\"transportPayloadType\": \"PROTOBUF\", \"deviceTelemetryProtoSchemaFile\": "
        "\"/etc/coapbridge/telemetry.proto\"}}.")
    data_dir: str = setting(
        "./data", "Holds the device registry (registry.sqlite3, unless registry.url says "
        "otherwise) and the outbox (outbox.sqlite3, always here: acknowledged uplinks never "
        "depend on the network).")
    health: HealthConfig = section(HealthConfig)
    log_level: str = setting(
        "info", "debug, info, warn (or warning), error or critical, in any case. Every line "
        "the process writes obeys it, Twisted's own too (its port and protocol lines are "
        "debug).", choices=("debug", "info", "warn", "error", "critical"), any_case=True,
        spellings=(("warning", "warn"), ("fatal", "critical")))
    log_format: str = setting(
        "text", "text (twistd's lines) or json: one JSON object per line on standard output "
        "(or twistd's --logfile), for log shippers: time, level (debug, info, warning, "
        "error, critical), logger, message, traceback (for a failure), then the event's "
        "fields (peer, device, topic, count...).", choices=("text", "json"))

    @property
    def registry_path(self) -> str:
        return os.path.join(self.data_dir, "registry.sqlite3")

    @property
    def registry_target(self) -> RegistryTarget:
        """Where the device registry is (checked by ``load``: this does not raise then)."""
        return registry_url.parse(self.registry.url, self.registry_path,
                                  self.registry.password or None)

    @property
    def outbox_path(self) -> str:
        return os.path.join(self.data_dir, "outbox.sqlite3")

    def worker_outbox_path(self, worker: int) -> str:
        """The outbox of worker ``worker`` (1..coap.workers) of a supervised bridge; 0: the
        single process's ``outbox_path``."""
        if not worker:
            return self.outbox_path
        return os.path.join(self.data_dir, "outbox-w%d.sqlite3" % worker)


def check(config: Config, problems: Problems) -> None:
    """The checks between settings, section by section."""
    for part in (coap, mqtt, devices, platform, provisioning, ota, dtls, reliable, registry,
                 profiles):
        part.check(config, problems)


def gateway_client_id(config: Config, host_name: str) -> str:
    """``mqtt.client_id``, or when empty ``coapbridge-<host>-<hash>``: one per installation.

    The hash is of the host name and the absolute ``data_dir``, so two bridges on
    one machine (different data directories) or on two machines get different ids,
    and a bridge keeps its id across restarts.
    """
    if config.mqtt.client_id:
        return config.mqtt.client_id
    data_dir = os.path.abspath(config.data_dir)
    digest = hashlib.sha256(("%s\0%s" % (host_name, data_dir)).encode("utf-8")).hexdigest()
    host = re.sub(r"[^A-Za-z0-9-]+", "-", host_name.split(".")[0]).strip("-")[:32] or "host"
    return "coapbridge-%s-%s" % (host, digest[:8])


def worker_client_id(config: Config, host_name: str, worker: int) -> str:
    """The MQTT client id of worker ``worker`` (``gateway_client_id`` plus ``-w<N>``); 0, the
    single process: ``gateway_client_id`` itself."""
    base = gateway_client_id(config, host_name)
    return "%s-w%d" % (base, worker) if worker else base
