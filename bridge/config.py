"""Configuration: one YAML file, every value overridable from the environment.

Scalars may use ThingsBoard's ``${NAME:default}`` syntax (``${NAME}`` means
no default: unset is an error). The file is checked against a schema and
every problem is reported at once in one ``ConfigError``, before any socket
opens.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from . import registry_url
from .core.actions import PowerSettings
from .core.formats import protoschema
from .registry_url import RegistryTarget

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class ConfigError(Exception):
    """Every problem found in a configuration, one per line."""

    def __init__(self, problems: List[str], source: str = "configuration"):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = ["%s has %d problem%s:" % (self.source, len(self.problems),
                                          "" if len(self.problems) == 1 else "s")]
        lines += ["  - " + problem for problem in self.problems]
        return "\n".join(lines)


class StartupError(Exception):
    """A problem found while starting (a port in use, DATA_DIR not writable, a damaged
    file): one line for the operator that names the port or file and what to do."""


@dataclass(frozen=True)
class CoapConfig:
    bind_address: str = "0.0.0.0"
    bind_port: int = 5683
    empty_ack_delay: float = 0.5
    exchange_lifetime: float = 247.0
    max_observers: int = 100000
    # Largest request body accepted (also reassembled from Block1); larger gets 4.13.
    max_body: int = 65536
    # RFC 7252 §4.8 transmission parameters for CON notifications.
    ack_timeout: float = 2.0
    max_retransmit: int = 4
    # A NON observer gets a CON notification at least this often (RFC 7641 §4.5).
    con_notification_interval: float = 86400.0
    # Worker processes sharing the UDP port(s) with SO_REUSEPORT; 1: one process, no
    # supervisor (see bridge/supervisor.py).
    workers: int = 1
    # Power saving (ThingsBoard's transport.coap.psm_activity_timer and
    # paging_transmission_window, here in seconds): the windows of PSM and eDRX devices
    # whose settings give none; transport_log: their sleep/wake transitions as telemetry.
    psm_activity_timer: float = 10.0
    paging_transmission_window: float = 10.0
    transport_log: bool = False


# CoAP's mandatory suites (RFC 7252 §9.1.3: PSK and certificates with CCM_8), AES-GCM,
# and the ECDHE-PSK suite GnuTLS clients pick; OpenSSL 3 only offers CCM_8 at level 0.
DTLS_CIPHERS = ("ECDHE-ECDSA-AES128-CCM8:PSK-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256:"
                "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                "ECDHE-RSA-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:"
                "ECDHE-PSK-AES128-CBC-SHA256:ECDHE-ECDSA-AES128-CCM:PSK-AES128-CCM:@SECLEVEL=0")


@dataclass(frozen=True)
class X509Config:
    # Register an unknown client certificate (one that chains to dtls.ca_file) on first
    # use, named by its subject CN, or by group 1 of cn_regex matched in the CN.
    auto_register: bool = False
    cn_regex: str = ""
    device_type: str = ""  # empty: devices.default_type


@dataclass(frozen=True)
class DtlsConfig:
    enabled: bool = False
    bind_address: str = ""  # empty: coap.bind_address
    bind_port: int = 5684
    cert_file: str = ""  # the bridge's certificate chain (PEM, leaf first); RSA or ECDSA
    key_file: str = ""
    ca_file: str = ""  # trust anchors for device certificates; empty: none requested
    psk: bool = True  # devices may authenticate by a pre-shared key from the registry
    psk_identity_hint: str = ""
    mtu: int = 1232  # largest datagram sent (IPv6's 1280 less its headers)
    handshake_timeout: float = 30.0
    idle_timeout: float = 600.0
    max_sessions: int = 10000
    handshake_rate: float = 10.0  # handshakes per second per source address
    handshake_burst: float = 20.0
    ciphers: str = DTLS_CIPHERS
    x509: X509Config = field(default_factory=X509Config)


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_hostname: bool = True


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str = ""
    password: str = ""
    # Empty: one derived per installation (``gateway_client_id``); two bridges must not
    # share one, or the broker drops each when the other connects.
    client_id: str = ""
    protocol: str = "5"
    keepalive: int = 60
    connect_timeout: float = 10.0
    # Seconds a publish may wait for the broker's PUBACK (was ``ack_timeout``, a name the
    # CoAP ACK timeout has too; the old key and MQTT_ACK_TIMEOUT are still read).
    puback_timeout: float = 10.0
    max_packet_size: int = 65536
    max_inflight: int = 100
    reconnect_min_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def mqtt5(self) -> bool:
        return self.protocol == "5"


@dataclass(frozen=True)
class DevicesConfig:
    default_type: str = "default"
    idle_timeout: float = 600.0


@dataclass(frozen=True)
class PlatformConfig:
    request_timeout: float = 10.0
    rpc_queue_size: int = 100
    rpc_queue_ttl: float = 60.0
    client_rpc_method: str = "deviceRpc"


@dataclass(frozen=True)
class OutboxConfig:
    max_entries: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    max_age: float = 7 * 86400.0
    synchronous: str = "full"
    max_batch: int = 100


@dataclass(frozen=True)
class LimitsConfig:
    device_rate: float = 10.0
    device_burst: float = 20.0
    peer_rate: float = 1000.0
    peer_burst: float = 2000.0
    # package blocks (from the local cache): bytes per second and burst per device
    download_rate: float = 128 * 1024.0
    download_burst: float = 16 * 1024 * 1024.0
    max_pending_per_peer: int = 64  # per source endpoint (address and port)
    max_pending_per_address: int = 4096
    # JSON nested deeper than this is refused: 4.00 from devices, skipped from the platform
    # (whose envelope may add PLATFORM_ENVELOPE_DEPTH levels on top).
    json_max_depth: int = 32


@dataclass(frozen=True)
class ProvisionProfileConfig:
    key: str = ""
    secret: str = ""
    device_type: str = ""
    strategy: str = "create_new"


@dataclass(frozen=True)
class ProvisioningConfig:
    # "upstream": the platform's provisioning API; "local": the profiles below.
    mode: str = "upstream"
    timeout: float = 10.0
    # Requests in progress at once (same-name ones wait for each other, and count); more: 5.03.
    max_concurrent: int = 8
    # Provisioning needs no token: per source address, requests/s and burst (0: no limit).
    peer_rate: float = 1.0
    peer_burst: float = 10.0
    profiles: Tuple[ProvisionProfileConfig, ...] = ()


@dataclass(frozen=True)
class OtaConfig:
    # "upstream": ThingsBoard's device OTA topics; "directory": files in ``directory``.
    source: str = "upstream"
    directory: str = ""
    chunk_size: int = 16384
    timeout: float = 120.0
    cache_max_bytes: int = 1024 * 1024 * 1024


# Fields holding a list of mappings, and the dataclass of each item.
_LISTS: Dict[str, Any] = {"profiles": ProvisionProfileConfig}


@dataclass(frozen=True)
class ClientSettings:
    """A device profile's power saving, ThingsBoard's ``clientSettings`` (times in ms; empty,
    0 or null: not given)."""
    powerMode: str = ""  # PSM, DRX or E_DRX; empty: DRX
    psmActivityTimer: int = 0
    edrxCycle: int = 0
    pagingTransmissionWindow: int = 0


POWER_MODES = ("PSM", "DRX", "E_DRX")
_NULLABLE = (ClientSettings,)  # whose keys may be null (exported profiles have nulls)


@dataclass(frozen=True)
class DeviceProfileConfig:
    """How the devices of one type encode their payloads: ThingsBoard's own keys from a
    device profile's transportPayloadTypeConfiguration. Each schema is its text, or the
    path of a file holding it (the key with ``File`` appended); a PROTOBUF profile that
    leaves one out gets ThingsBoard's default. After loading, the schema keys hold the
    text (read from the file, or the default). ``thingsboardProfile``: instead of the keys,
    a device profile exported from ThingsBoard (JSON), whose CoAP settings are read.
    ``coapDeviceType``: DEFAULT (the ``/api/v1`` device API) or EFENTO (Efento's NB-IoT
    sensors on ``/efento/*``, their own Protocol Buffers messages: no payload type)."""
    thingsboardProfile: str = ""
    coapDeviceType: str = "DEFAULT"
    transportPayloadType: str = "JSON"
    deviceTelemetryProtoSchema: str = ""
    deviceTelemetryProtoSchemaFile: str = ""
    deviceAttributesProtoSchema: str = ""
    deviceAttributesProtoSchemaFile: str = ""
    deviceRpcRequestProtoSchema: str = ""
    deviceRpcRequestProtoSchemaFile: str = ""
    deviceRpcResponseProtoSchema: str = ""
    deviceRpcResponseProtoSchemaFile: str = ""
    enableCompatibilityWithJsonPayloadFormat: bool = False
    useJsonPayloadFormatForDefaultDownlinkTopics: bool = False
    clientSettings: ClientSettings = field(default_factory=ClientSettings)

    @property
    def power_settings(self) -> PowerSettings:
        client = self.clientSettings
        return PowerSettings(client.powerMode or None, client.psmActivityTimer or None,
                             client.edrxCycle or None, client.pagingTransmissionWindow or None)

    @property
    def protobuf(self) -> bool:
        return self.transportPayloadType == "PROTOBUF" and not self.efento

    @property
    def efento(self) -> bool:
        return self.coapDeviceType == "EFENTO"


# Fields holding a mapping of names to mappings, and the dataclass of each value.
_MAPS: Dict[str, Any] = {"device_profiles": DeviceProfileConfig}


@dataclass(frozen=True)
class MetricsConfig:
    # HTTP GET /metrics (Prometheus text format); port 0 turns it off.
    bind_address: str = "127.0.0.1"
    port: int = 9683


@dataclass(frozen=True)
class RegistryConfig:
    # sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB (bridge/registry_url.py);
    # empty: SQLite at DATA_DIR/registry.sqlite3
    url: str = ""
    password: str = ""  # wins over the URL's; read from password_file when that is given
    password_file: str = ""
    pool_size: int = 4  # PostgreSQL connections for writes (one more listens for changes)


@dataclass(frozen=True)
class Config:
    coap: CoapConfig = field(default_factory=CoapConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    provisioning: ProvisioningConfig = field(default_factory=ProvisioningConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dtls: DtlsConfig = field(default_factory=DtlsConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    # device type -> its payload format (a type with no entry speaks JSON)
    device_profiles: Dict[str, DeviceProfileConfig] = field(default_factory=dict)
    data_dir: str = "./data"
    log_level: str = "info"
    log_format: str = "text"  # text: twistd's lines; json: one JSON object per line

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


_CHOICES: Dict[str, Tuple[str, ...]] = {
    "mqtt.protocol": ("5", "3.1.1"),
    "log_level": ("debug", "info", "warn", "error", "critical"),
    "log_format": ("text", "json"),
    "outbox.synchronous": ("full", "normal"),
    "provisioning.mode": ("upstream", "local"),
    "ota.source": ("upstream", "directory"),
}
_PORTS = ("coap.bind_port", "mqtt.port", "dtls.bind_port")
MAX_WORKERS = 256
MAX_POWER_TIMER = 7 * 86400 * 1000  # ms: a week, far beyond any device's cycle
MAX_JSON_DEPTH = 256  # well below Python's recursion limit (1000) with the reactor's frames
_POSITIVE = ("coap.empty_ack_delay", "coap.exchange_lifetime", "mqtt.keepalive",
             "mqtt.connect_timeout", "mqtt.puback_timeout", "mqtt.max_packet_size",
             "mqtt.max_inflight", "mqtt.reconnect_min_delay", "mqtt.reconnect_max_delay",
             "devices.idle_timeout", "coap.max_observers", "coap.max_body", "coap.ack_timeout",
             "coap.con_notification_interval", "coap.psm_activity_timer",
             "coap.paging_transmission_window",
             "platform.request_timeout", "platform.rpc_queue_size", "platform.rpc_queue_ttl",
             "outbox.max_entries", "outbox.max_bytes", "outbox.max_age", "outbox.max_batch",
             "limits.device_burst", "limits.peer_burst", "limits.max_pending_per_peer",
             "limits.max_pending_per_address", "limits.download_burst", "limits.json_max_depth",
             "provisioning.timeout", "provisioning.max_concurrent", "provisioning.peer_burst",
             "ota.chunk_size", "ota.timeout", "ota.cache_max_bytes", "registry.pool_size",
             "dtls.handshake_timeout", "dtls.idle_timeout", "dtls.max_sessions",
             "dtls.handshake_burst")


# Settings renamed: old key -> new key, old environment name -> new one. The old ones are
# still read, with a deprecation warning (the new one wins when both are given).
RENAMED_KEYS = {"mqtt.ack_timeout": "mqtt.puback_timeout"}
RENAMED_ENV = {"MQTT_ACK_TIMEOUT": "MQTT_PUBACK_TIMEOUT"}


class ConfigDeprecationWarning(FutureWarning):
    """A setting spelled the old way: it still works, under its new name."""


def _renamed(raw: Dict[str, Any], prefix: str, notes: List[str]) -> Dict[str, Any]:
    """``raw`` with the old keys of this section under their new names (noted)."""
    for old, new in RENAMED_KEYS.items():
        section, _, old_key = old.rpartition(".")
        new_key = new.rpartition(".")[2]
        if prefix != section + "." or old_key not in raw:
            continue
        notes.append("%s is deprecated: call it %s" % (old, new))
        raw = dict(raw)
        value = raw.pop(old_key)
        raw.setdefault(new_key, value)
    return raw


def _renamed_env(env: Mapping[str, str], notes: List[str]) -> Mapping[str, str]:
    for old, new in RENAMED_ENV.items():
        if old in env:
            notes.append("environment variable %s is deprecated: call it %s" % (old, new))
            if new not in env:
                env = dict(env, **{new: env[old]})
    return env


def substitute(text: str, env: Mapping[str, str], where: str, problems: List[str]) -> str:
    """Expand ``${NAME:default}`` references in one scalar."""
    def expand(match: "re.Match[str]") -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is None:
            problems.append("%s: environment variable %s is not set and has no default"
                            % (where, name))
            return ""
        return default
    return _ENV.sub(expand, text)


def _coerce(value: Any, target: Any, where: str, problems: List[str]) -> Any:
    kind = type(target)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", ""):
            return False
        problems.append("%s: expected true or false, got %r" % (where, value))
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            problems.append("%s: expected an integer, got %r" % (where, value))
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            problems.append("%s: expected a number, got %r" % (where, value))
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append("%s: expected a string, got %r" % (where, value))
    return target


def _build(cls: Any, raw: Any, env: Mapping[str, str], prefix: str, problems: List[str],
           notes: Optional[List[str]] = None) -> Any:
    notes = [] if notes is None else notes
    defaults = cls()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append("%s: expected a mapping, got %r" % (prefix or "top level", raw))
        return defaults
    raw = _renamed(raw, prefix, notes)
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            problems.append("%s: unknown key (known: %s)"
                            % (prefix + str(key), ", ".join(sorted(known))))
    values = {}
    for f in fields(cls):
        where = prefix + f.name
        default = getattr(defaults, f.name)
        if f.name not in raw:
            values[f.name] = default
            continue
        value = raw[f.name]
        if value is None and cls in _NULLABLE:
            values[f.name] = default
            continue
        if f.name in _MAPS:
            values[f.name] = _build_map(_MAPS[f.name], value, env, where, problems)
            continue
        if f.name in _LISTS:
            if not isinstance(value, list):
                problems.append("%s: expected a list" % where)
                values[f.name] = default
            else:
                values[f.name] = tuple(_build(_LISTS[f.name], item, env,
                                              "%s[%d]." % (where, n), problems)
                                       for n, item in enumerate(value))
            continue
        if is_dataclass(default):
            values[f.name] = _build(type(default), value, env, where + ".", problems, notes)
            continue
        if isinstance(value, str):
            before = len(problems)
            value = substitute(value, env, where, problems)
            if len(problems) > before:
                values[f.name] = default  # already reported: the variable is unset
                continue
        values[f.name] = _coerce(value, default, where, problems)
    return cls(**values)


def _build_map(cls: Any, raw: Any, env: Mapping[str, str], where: str,
               problems: List[str]) -> Dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("%s: expected a mapping of device types" % where)
        return {}
    return {str(key): _build(cls, item, env, "%s.%s." % (where, key), problems)
            for key, item in raw.items()}


def _schema_text(profile: DeviceProfileConfig, kind: str, where: str,
                 problems: List[str]) -> str:
    text, path = getattr(profile, kind), getattr(profile, kind + "File")
    if text and path:
        problems.append("%s: give %s or %sFile, not both" % (where, kind, kind))
    elif path:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            problems.append("%sFile: cannot read %s: %s" % (where + kind, path, exc.strerror))
    if not text and profile.protobuf:
        text = protoschema.DEFAULTS[kind]
    return text


def _exported_profile(profile: DeviceProfileConfig, where: str,
                      problems: List[str]) -> DeviceProfileConfig:
    """The settings of ``thingsboardProfile``, a device profile exported from ThingsBoard."""
    where += "thingsboardProfile"
    path = profile.thingsboardProfile
    unset = DeviceProfileConfig()
    given = [f.name for f in fields(DeviceProfileConfig)
             if f.name != "thingsboardProfile" and getattr(profile, f.name) != getattr(unset,
                                                                                  f.name)]
    if given:
        problems.append("%s: give the exported profile or its keys (%s), not both"
                        % (where, ", ".join(given)))
        return profile
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        problems.append("%s: cannot read %s: %s" % (where, path, exc.strerror))
        return profile
    except ValueError as exc:  # also not UTF-8
        problems.append("%s: %s is not JSON: %s" % (where, path, exc))
        return profile
    from .core.formats import tbprofile  # only for an entry that names an exported profile
    try:
        settings = tbprofile.payload_settings(doc)
    except tbprofile.NotUsable as exc:
        problems.append("%s: %s: %s" % (where, path, exc))
        return profile
    if "clientSettings" in settings:
        settings["clientSettings"] = _build(ClientSettings, settings["clientSettings"], {},
                                            "%s (in %s): clientSettings." % (where, path),
                                            problems)
    return replace(profile, **settings)


def _resolve_profiles(config: Config, problems: List[str]) -> Config:
    """Schemas read from their files (or ThingsBoard's defaults, or an exported profile),
    then compiled and checked: every problem names the profile, the schema, its line and
    column."""
    profiles = {}
    for name, profile in config.device_profiles.items():
        where = "device_profiles.%s." % name
        if profile.thingsboardProfile:
            profile = _exported_profile(profile, where, problems)
        if profile.transportPayloadType not in ("JSON", "PROTOBUF"):
            problems.append("%stransportPayloadType: must be JSON or PROTOBUF, got %r"
                            % (where, profile.transportPayloadType))
        if profile.coapDeviceType not in ("DEFAULT", "EFENTO"):
            problems.append("%scoapDeviceType: must be DEFAULT or EFENTO, got %r"
                            % (where, profile.coapDeviceType))
        elif profile.efento and profile.transportPayloadType != "JSON":
            problems.append("%stransportPayloadType: an EFENTO profile has none (its sensors "
                            "send Efento's own messages)" % where)
        _check_client_settings(profile.clientSettings, where + "clientSettings.",
                               " (in %s)" % profile.thingsboardProfile
                               if profile.thingsboardProfile else "", problems)
        texts = {kind: _schema_text(profile, kind, where, problems)
                 for kind in protoschema.KINDS}
        profiles[name] = replace(profile, **texts)
    config = replace(config, device_profiles=profiles)
    if any(profile.protobuf or profile.efento for profile in profiles.values()):
        from .edge import protoc  # runs a subprocess: only when a profile needs it
        problems.extend(protoc.check_profiles(profiles))
    return config


def _check_client_settings(client: ClientSettings, where: str, source: str,
                           problems: List[str]) -> None:
    if client.powerMode not in ("",) + POWER_MODES:
        problems.append("%spowerMode%s: must be one of %s, got %r"
                        % (where, source, ", ".join(POWER_MODES), client.powerMode))
    for key in ("psmActivityTimer", "edrxCycle", "pagingTransmissionWindow"):
        if not 0 <= getattr(client, key) <= MAX_POWER_TIMER:
            problems.append("%s%s%s: must be 0 (not given) to %d ms, got %s"
                            % (where, key, source, MAX_POWER_TIMER, getattr(client, key)))


def _check(config: Config, problems: List[str]) -> None:
    """Every problem of a parsed configuration, in the order of these checks."""
    _check_ranges(config, problems)
    _check_connections(config, problems)
    _check_features(config, problems)


def _check_ranges(config: Config, problems: List[str]) -> None:
    """Ports, positive numbers and choices, each setting on its own."""
    def get(dotted: str) -> Any:
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    if not 0 <= config.metrics.port <= 65535:
        problems.append("metrics.port: port %d is out of range 0-65535" % config.metrics.port)
    for key in _PORTS:
        if not 1 <= get(key) <= 65535:
            problems.append("%s: port %d is out of range 1-65535" % (key, get(key)))
    for key in _POSITIVE:
        if not get(key) > 0:  # also refuses NaN
            problems.append("%s: must be greater than 0, got %s" % (key, get(key)))
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            problems.append("%s: must be one of %s, got %r" % (key, ", ".join(choices), get(key)))


def _check_connections(config: Config, problems: List[str]) -> None:
    """MQTT and CoAP settings that depend on each other, TLS files, rate limits."""
    if config.mqtt.reconnect_max_delay < config.mqtt.reconnect_min_delay:
        problems.append("mqtt.reconnect_max_delay: must not be less than reconnect_min_delay")
    if config.coap.empty_ack_delay >= config.coap.ack_timeout:
        # the empty ACK must reach the client before it retransmits (RFC 7252 §5.2.2)
        problems.append("coap.empty_ack_delay: must be less than coap.ack_timeout (%s s), got %s"
                        % (config.coap.ack_timeout, config.coap.empty_ack_delay))
    if not 1 <= config.coap.workers <= MAX_WORKERS:
        problems.append("coap.workers: must be 1 to %d, got %d" % (MAX_WORKERS,
                                                                   config.coap.workers))
    depth = config.limits.json_max_depth
    if depth > MAX_JSON_DEPTH:
        problems.append("limits.json_max_depth: must be at most %d (Python decodes and encodes "
                        "JSON recursively), got %d" % (MAX_JSON_DEPTH, depth))
    if config.mqtt.max_packet_size > 268435455:
        problems.append("mqtt.max_packet_size: MQTT packets cannot exceed 268435455 bytes")
    tls = config.mqtt.tls
    if tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path and not os.path.isfile(path):
                problems.append("mqtt.tls.%s: file %s does not exist" % (key, path))
        if bool(tls.cert_file) != bool(tls.key_file):
            problems.append("mqtt.tls: cert_file and key_file must be given together")
    for key in ("device_rate", "peer_rate", "download_rate"):
        if not getattr(config.limits, key) >= 0:
            problems.append("limits.%s: must be 0 (unlimited) or more" % key)


def _check_features(config: Config, problems: List[str]) -> None:
    """Provisioning, OTA, client-side RPC and device defaults."""
    if not config.provisioning.peer_rate >= 0:
        problems.append("provisioning.peer_rate: must be 0 (unlimited) or more")
    for n, profile in enumerate(config.provisioning.profiles):
        where = "provisioning.profiles[%d]" % n
        for key in ("key", "secret", "device_type"):
            if not getattr(profile, key):
                problems.append("%s.%s: must not be empty" % (where, key))
        if profile.strategy not in ("create_new", "pre_provisioned"):
            problems.append("%s.strategy: must be create_new or pre_provisioned" % where)
    if config.provisioning.mode == "local" and not config.provisioning.profiles:
        problems.append("provisioning.profiles: local mode needs at least one profile")
    if config.ota.source == "directory" and not os.path.isdir(config.ota.directory):
        problems.append("ota.directory: %r is not a directory" % config.ota.directory)
    if config.ota.chunk_size > config.mqtt.max_packet_size - 128:
        problems.append("ota.chunk_size: must stay below mqtt.max_packet_size")
    if not config.platform.client_rpc_method:
        problems.append("platform.client_rpc_method: must not be empty")
    if not config.devices.default_type:
        problems.append("devices.default_type: must not be empty")
    if config.dtls.x509.cn_regex:
        try:
            re.compile(config.dtls.x509.cn_regex)
        except re.error as exc:
            problems.append("dtls.x509.cn_regex: not a regular expression (%s)" % exc)
    if config.dtls.enabled:
        _check_dtls(config.dtls, problems)
        _check_dtls_port(config, problems)


def _check_dtls(dtls: DtlsConfig, problems: List[str]) -> None:
    """The DTLS files exist and fit together (OpenSSL reads them: ``edge.dtls``)."""
    if not 256 <= dtls.mtu <= 65507:
        problems.append("dtls.mtu: must be 256 to 65507, got %d" % dtls.mtu)
    if not dtls.handshake_rate >= 0:
        problems.append("dtls.handshake_rate: must be 0 (unlimited) or more")
    if bool(dtls.cert_file) != bool(dtls.key_file):
        problems.append("dtls: cert_file and key_file must be given together")
    if dtls.ca_file and not dtls.cert_file:
        problems.append("dtls.ca_file: device certificates need the bridge's own "
                        "(dtls.cert_file and dtls.key_file)")
    if not dtls.cert_file and not dtls.psk:
        problems.append("dtls: enabled with no way to authenticate: give cert_file and "
                        "key_file (COAP_DTLS_CERT_FILE, COAP_DTLS_KEY_FILE) or turn psk on")
    from .edge import dtls as dtls_edge  # OpenSSL: only when DTLS is on
    problems.extend(dtls_edge.check_config(dtls))


def _check_dtls_port(config: Config, problems: List[str]) -> None:
    """CoAPs and CoAP on one UDP port of overlapping addresses: with coap.workers > 1 both
    bind it with SO_REUSEPORT and the kernel splits the datagrams between them."""
    coap_address, dtls_address = config.coap.bind_address, config.dtls.bind_address
    if config.dtls.bind_port == config.coap.bind_port and \
            _overlap(coap_address, dtls_address or coap_address):
        problems.append("dtls.bind_port: %d is coap.bind_port too, on overlapping addresses "
                        "(COAP_DTLS_BIND_PORT, COAP_BIND_PORT): give CoAPs a port of its "
                        "own" % config.dtls.bind_port)


def _overlap(one: str, other: str) -> bool:
    """Whether sockets bound to these two addresses can receive the same datagrams."""
    if one == other:
        return True
    try:
        a, b = ipaddress.ip_address(one or "0.0.0.0"), ipaddress.ip_address(other or "0.0.0.0")
    except ValueError:  # a host name: only the same one is known to overlap
        return False
    if a.is_unspecified and b.is_unspecified:
        return True
    for wild, addr in ((a, b), (b, a)):
        if wild.is_unspecified and (wild.version == addr.version or wild.version == 6):
            return True  # "::" takes IPv4 too on a dual-stack socket
    return a == b


def _resolve_registry(config: Config, problems: List[str]) -> Config:
    """The password read from ``registry.password_file``, then the URL checked."""
    settings = config.registry
    if settings.password_file:
        if settings.password:
            problems.append("registry: give password or password_file, not both")
        try:
            with open(settings.password_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            problems.append("registry.password_file: cannot read %s: %s"
                            % (settings.password_file, exc.strerror))
        else:
            config = replace(config, registry=replace(
                settings, password=lines[0] if lines else ""))
    try:
        target = registry_url.parse(config.registry.url, config.registry_path,
                                    config.registry.password or None)
    except registry_url.BadRegistryUrl as exc:
        problems.append("registry.url: %s" % exc)
        return config
    if target.shared and not registry_url.driver_available():
        problems.append("registry.url: a PostgreSQL registry needs psycopg on CPython "
                        "(pip install 'psycopg[binary]' psycopg-pool; psycopg does not run on "
                        "PyPy 7.3.11): run the bridge on CPython, or use SQLite")
    return config


def load_text(text: str, env: Mapping[str, str], source: str = "configuration") -> Config:
    problems: List[str] = []
    notes: List[str] = []
    env = _renamed_env(env, notes)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(["YAML syntax error: %s" % str(exc).replace("\n", " ")], source)
    config = _build(Config, raw, env, "", problems, notes)
    for note in notes:  # one line each, naming the file (Twisted logs warnings as warnings)
        warnings.warn_explicit(note, ConfigDeprecationWarning, source, 0)
    _check(config, problems)
    config = _resolve_registry(config, problems)
    config = _resolve_profiles(config, problems)
    if problems:
        raise ConfigError(problems, source)
    return config


def load(path: Optional[str], env: Optional[Mapping[str, str]] = None) -> Config:
    """Load ``path`` (or only defaults and environment when None)."""
    env = os.environ if env is None else env
    if path is None:
        return load_text(_DEFAULT_TEXT, env, "built-in defaults")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(["cannot read %s: %s" % (path, exc.strerror)], path)
    return load_text(text, env, path)


def default_path(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``$COAPBRIDGE_CONFIG``, else ``conf/coapbridge.yaml`` when present, else None."""
    env = os.environ if env is None else env
    if env.get("COAPBRIDGE_CONFIG"):
        return env["COAPBRIDGE_CONFIG"]
    if os.path.isfile(os.path.join("conf", "coapbridge.yaml")):
        return os.path.join("conf", "coapbridge.yaml")
    return None


# Used when no file is given: the same environment names as conf/coapbridge.yaml.
_DEFAULT_TEXT = """
coap: {bind_address: "${COAP_BIND_ADDRESS:0.0.0.0}", bind_port: "${COAP_BIND_PORT:5683}",
       workers: "${COAP_WORKERS:1}"}
mqtt:
  host: "${MQTT_HOST:localhost}"
  port: "${MQTT_PORT:1883}"
  username: "${MQTT_USERNAME:}"
  password: "${MQTT_PASSWORD:}"
  client_id: "${MQTT_CLIENT_ID:}"
  protocol: "${MQTT_PROTOCOL:5}"
  tls: {enabled: "${MQTT_TLS:false}", ca_file: "${MQTT_TLS_CA_FILE:}",
        cert_file: "${MQTT_TLS_CERT_FILE:}", key_file: "${MQTT_TLS_KEY_FILE:}"}
dtls:
  enabled: "${COAP_DTLS_ENABLED:false}"
  bind_address: "${COAP_DTLS_BIND_ADDRESS:}"
  bind_port: "${COAP_DTLS_BIND_PORT:5684}"
  cert_file: "${COAP_DTLS_CERT_FILE:}"
  key_file: "${COAP_DTLS_KEY_FILE:}"
  ca_file: "${COAP_DTLS_CA_FILE:}"
registry: {url: "${REGISTRY_URL:}", password: "${REGISTRY_PASSWORD:}",
           password_file: "${REGISTRY_PASSWORD_FILE:}"}
data_dir: "${DATA_DIR:./data}"
"""
