"""``reliable:``: CoAP over TCP, TLS and WebSockets (RFC 8323), each listener off by default.

Four listeners (``tcp``, ``tls``, ``ws``, ``wss``), each with its own TCP port, and the
limits they share. The issue's environment names are the documented ones
(``COAP_TCP_ENABLED``, ``COAP_TLS_BIND_PORT``, ``COAP_WS_ENABLED``...); the derived ones
(``RELIABLE_TCP_ENABLED``...) work too. OpenSSL reads the TLS files in the start-up
checks (``bridge.startup_checks``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Tuple

from .dtls import DtlsConfig
from .schema import Problems, env_name, section, setting

LISTENERS = ("tcp", "tls", "ws", "wss")


def _env(prefix: str, key: str) -> tuple:
    return ("COAP_%s_%s" % (prefix, key.upper()),)


@dataclass(frozen=True)
class TcpListenerConfig:
    """coap+tcp: CoAP over TCP (RFC 8323 §3)."""
    enabled: bool = setting(False, "Serve coap+tcp.", env=_env("TCP", "enabled"))
    bind_address: str = setting("", "Address for coap+tcp devices. Empty: coap.bind_address.",
                                address=True, env=_env("TCP", "bind_address"))
    bind_port: int = setting(5683, "TCP port for coap+tcp devices.", low=1, high=65535,
                             port=True, env=_env("TCP", "bind_port"))


@dataclass(frozen=True)
class TlsListenerConfig:
    """coaps+tcp: CoAP over TLS 1.2/1.3 (RFC 8323 §3), with the identity rules of CoAPs."""
    enabled: bool = setting(False, "Serve coaps+tcp.", env=_env("TLS", "enabled"))
    bind_address: str = setting("", "Address for coaps+tcp devices. Empty: "
                                "coap.bind_address.", address=True,
                                env=_env("TLS", "bind_address"))
    bind_port: int = setting(5684, "TCP port for coaps+tcp devices.", low=1, high=65535,
                             port=True, env=_env("TLS", "bind_port"))


@dataclass(frozen=True)
class WsListenerConfig:
    """coap+ws: CoAP over WebSockets (RFC 8323 §4) on /.well-known/coap, subprotocol coap."""
    enabled: bool = setting(False, "Serve coap+ws.", env=_env("WS", "enabled"))
    bind_address: str = setting("", "Address for coap+ws devices and browsers. Empty: "
                                "coap.bind_address.", address=True,
                                env=_env("WS", "bind_address"))
    bind_port: int = setting(8683, "TCP port for coap+ws.", low=1, high=65535, port=True,
                             env=_env("WS", "bind_port"))


@dataclass(frozen=True)
class WssListenerConfig:
    """coaps+ws: CoAP over WebSockets over TLS (RFC 8323 §4)."""
    enabled: bool = setting(False, "Serve coaps+ws.", env=_env("WSS", "enabled"))
    bind_address: str = setting("", "Address for coaps+ws. Empty: coap.bind_address.",
                                address=True, env=_env("WSS", "bind_address"))
    bind_port: int = setting(8684, "TCP port for coaps+ws.", low=1, high=65535, port=True,
                             env=_env("WSS", "bind_port"))


@dataclass(frozen=True)
class ReliableConfig:
    """CoAP over TCP, TLS and WebSockets (RFC 8323): every device API as over CoAP, for load
    balancers and firewalls that pass TCP only, NATs that keep TCP mappings longer, and
    browsers. The listeners and the limits they share."""
    tcp: TcpListenerConfig = section(TcpListenerConfig)
    tls: TlsListenerConfig = section(TlsListenerConfig)
    ws: WsListenerConfig = section(WsListenerConfig)
    wss: WssListenerConfig = section(WssListenerConfig)
    cert_file: str = setting(
        "", "The bridge's certificate chain for tls and wss (PEM, leaf first). Empty: "
        "dtls.cert_file (and key_file, ca_file likewise).", env=("COAP_TLS_CERT_FILE",))
    key_file: str = setting("", "The private key of cert_file (PEM). Empty: dtls.key_file "
                            "when cert_file is empty too.", env=("COAP_TLS_KEY_FILE",))
    ca_file: str = setting(
        "", "Trust anchors (PEM) for device certificates over TLS: asked for, not required, "
        "verified when presented. Empty: dtls.ca_file.", env=("COAP_TLS_CA_FILE",))
    psk: bool = setting(True, "Devices may authenticate over TLS by a pre-shared key from the "
                        "registry (TLS 1.2 PSK suites and TLS 1.3 external PSKs, through DTLS's "
                        "PSK callback; TLS 1.3 then offers its SHA-256 suites only).",
                        env=("COAP_TLS_PSK",))
    handshake_timeout: float = setting(
        10.0, "Seconds a TLS handshake or a WebSocket opening may take.", low=0, high=600,
        above=True, unit="s", env=("COAP_TLS_HANDSHAKE_TIMEOUT",))
    max_connections: int = setting(
        50000, "Connections at most, over every listener; past that a new connection is "
        "closed at once (the open-file limit is raised towards it at start).",
        low=1, high=10_000_000)
    max_connections_per_address: int = setting(
        4096, "Connections at most from one address (many devices behind one carrier NAT).",
        low=1, high=10_000_000)
    max_message_size: int = setting(
        65536 + 1024, "Largest message taken, header included, advertised in the bridge's "
        "CSM (RFC 8323 §5.3.1); a longer request gets 4.13, anything else longer an Abort.",
        low=1152, high=16 * 1024 * 1024, unit="bytes", why="1152 is RFC 8323's base value")
    csm_timeout: float = setting(
        10.0, "Seconds for a device's CSM to arrive (RFC 8323 §5.3), else Abort.",
        low=0, high=600, above=True, unit="s")
    keepalive: float = setting(
        120.0, "Seconds without a byte from a device before the bridge sends it a Ping. 0: "
        "never.", low=0, high=86400, unit="s")
    idle_timeout: float = setting(
        600.0, "Seconds without a byte from a device before the bridge releases the "
        "connection (a device that answers the Pings keeps it). 0: never.",
        low=0, high=7 * 86400, unit="s")
    max_write_buffer: int = setting(
        262144, "Bytes waiting to be written to a device that reads slowly before the bridge "
        "stops reading its connection (backpressure).", low=1024, high=1 << 30,
        unit="bytes")


def enabled(config: Any) -> Tuple[str, ...]:
    return tuple(name for name in LISTENERS if getattr(config.reliable, name).enabled)


def tls_files(config: Any) -> DtlsConfig:
    """The TLS files of the RFC 8323 listeners: ``reliable.*_file``, else ``dtls.*_file``,
    as a DtlsConfig (whose checks and context set-up they share)."""
    cfg, dtls = config.reliable, config.dtls
    separate = bool(cfg.cert_file)
    return replace(dtls, cert_file=cfg.cert_file or dtls.cert_file,
                   key_file=cfg.key_file if separate else dtls.key_file,
                   ca_file=cfg.ca_file or dtls.ca_file, psk=cfg.psk,
                   handshake_timeout=cfg.handshake_timeout)


def check(config: Any, problems: Problems) -> None:
    names = enabled(config)
    if not names:
        return
    cfg = config.reliable
    if ("tls" in names or "wss" in names) and not tls_files(config).cert_file and \
            not ("tls" in names and cfg.psk and "wss" not in names):
        problems.add("reliable.cert_file", "reliable: TLS (tls or wss) enabled without a "
                     "certificate: give reliable.cert_file and key_file (%s, %s) or "
                     "dtls.cert_file and key_file" % (env_name("reliable.cert_file"),
                                                      env_name("reliable.key_file")))
    seen: Dict[Tuple[str, int], str] = {}
    for name in names:
        listener = getattr(cfg, name)
        key = (listener.bind_address or config.coap.bind_address, listener.bind_port)
        if key in seen:
            problems.add("reliable.%s.bind_port" % name, "reliable.%s.bind_port: %d is "
                         "reliable.%s's too" % (name, listener.bind_port, seen[key]))
        seen[key] = name
