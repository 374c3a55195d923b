"""``coapbridge check-config`` and ``coapbridge config show|env|doc|example``.

check-config prints one line per part that is on (CoAP, CoAPs with its credential
kinds, MQTT, device profiles by type and format, workers, the registry, metrics,
provisioning and OTA) and warns about a CoAPs without a certificate; ``config show``
prints every setting's value (secrets masked) and where it came from; ``config env``
lists every environment variable; ``config doc`` and ``config example`` print
docs/configuration.md and conf/coapbridge.yaml as the schema has them (the doc with each
payload format's keys, declared in its module: ``format_keys``).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any, List, Optional, Tuple

from . import startup_checks
from .settings import Config, ConfigError, read
from .settings import describe
from .settings.dtls import warnings_of as dtls_warnings


def check_config(path: Optional[str], config: Config) -> int:
    print("%s: OK" % (path or "built-in defaults"))
    for name, text in summary(config):
        print("  %-13s %s" % (name + ":", text))
    for line in dtls_warnings(config):
        print("warning: " + line, file=sys.stderr)
    return 0


def summary(config: Config) -> List[tuple]:
    """(part, one line) for every part of the bridge that is on."""
    coap = config.coap
    workers = "one process" if coap.workers == 1 else \
        "%d worker processes (SO_REUSEPORT)" % coap.workers
    lines = [("CoAP", "UDP %s port %d, %s" % (coap.bind_address, coap.bind_port, workers))]
    dtls = config.dtls
    if dtls.enabled:
        lines.append(("CoAPs", "UDP %s port %d, devices by %s" % (
            dtls.bind_address or coap.bind_address, dtls.bind_port,
            ", ".join(credential_kinds(config)) or "nothing")))
    mqtt = config.mqtt
    lines.append(("MQTT", "%s:%d, MQTT %s, TLS %s" % (mqtt.host, mqtt.port, mqtt.protocol,
                                                     "on" if mqtt.tls.enabled else "off")))
    lines.append(("profiles", profiles_text(config)))
    lines.append(("registry", config.registry_target.display))
    lines.append(("data", config.data_dir))
    metrics = config.metrics
    lines.append(("metrics", "http://%s:%d/metrics, /healthz, /readyz"
                  % (metrics.bind_address, metrics.port) if metrics.port else "off"))
    provisioning = config.provisioning
    lines.append(("provisioning", provisioning.mode + (
        " (%d profiles)" % len(provisioning.profiles) if provisioning.mode == "local" else "")))
    lines.append(("OTA", config.ota.source + (
        " %s" % config.ota.directory if config.ota.source == "directory" else "")))
    return lines


def credential_kinds(config: Config) -> List[str]:
    dtls = config.dtls
    kinds = []
    if dtls.psk:
        kinds.append("PSK")
    if dtls.cert_file:
        kinds.append("token over DTLS (bridge certificate %s)" % dtls.cert_file)
    if dtls.ca_file:
        kinds.append("certificate (CA %s%s)" % (dtls.ca_file, ", auto-registered"
                                                if dtls.x509.auto_register else ""))
    return kinds


def profiles_text(config: Config) -> str:
    if not config.device_profiles:
        return "none: every device type speaks JSON"
    from .core.formats.registry import INSTALLED  # google.protobuf: only with profiles
    parts = []
    for name, profile in sorted(config.device_profiles.items()):
        entry = INSTALLED.entry_for(profile)  # checked: every profile has its format
        text = "%s %s" % (name, (entry.payload_type or entry.device_type) if entry else "?")
        if profile.thingsboardProfile:
            text += " (ThingsBoard profile %s)" % profile.thingsboardProfile
        parts.append(text)
    return ", ".join(parts) + "; other types JSON"


def format_keys(formats: Any = None) -> List[Tuple[str, Any]]:
    """(format, its keys' dataclass) of each payload format with keys of its own
    (``formats``: the registry, the installed formats unless given), for the doc."""
    from .core.formats.registry import INSTALLED
    return [(entry.kind, entry.settings) for entry in (formats or INSTALLED).entries
            if fields(entry.settings)]


def config_command(action: str, path: Optional[str]) -> int:
    if action == "env":
        print("\n".join(describe.env_lines()))
        return 0
    if action == "doc":
        sys.stdout.write(describe.markdown(format_keys()))
        return 0
    if action == "example":
        sys.stdout.write(describe.example())
        return 0
    try:
        loaded = read(path)
    except ConfigError as exc:
        print("coapbridge: " + exc.render(), file=sys.stderr)
        return 2
    print("# %s" % loaded.source)
    print("\n".join(describe.show(loaded)))
    _, problems = startup_checks.check(loaded.config, list(loaded.problems))
    if problems:
        print("coapbridge: " + ConfigError(problems, loaded.source).render(), file=sys.stderr)
        return 2
    return 0
