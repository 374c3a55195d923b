"""``mqtt:``: the gateway connection to the platform's broker, with its TLS settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Problems, section, setting

MQTT_MAX_PACKET = 268435455  # MQTT's Remaining Length limit (4 bytes of 7 bits)

# keys renamed within this section: old -> new (the old still read, with a warning)
RENAMED_KEYS = {"ack_timeout": "puback_timeout"}


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker. The broker's certificate is always verified; a client certificate
    is optional."""
    enabled: bool = setting(False, "Connect with TLS.", env=("MQTT_TLS",))
    ca_file: str = setting("", "CA bundle that signed the broker's certificate. Empty: the "
                           "system CAs.")
    cert_file: str = setting("", "Client certificate (PEM), optional.")
    key_file: str = setting("", "The client certificate's key (PEM).")
    verify_hostname: bool = setting(True, "Check the broker's host name against its "
                                    "certificate too.")


@dataclass(frozen=True)
class MqttConfig:
    """The gateway's one connection to the broker (ThingsBoard's MQTT transport, or another
    broker the platform reads)."""
    host: str = setting("localhost", "The broker's host name or address.")
    port: int = setting(1883, "The broker's TCP port.", low=1, high=65535, port=True)
    username: str = setting(
        "", "The gateway device's access token on ThingsBoard (password and client id are "
        "ignored there for token credentials; other brokers may need them).", secret="token")
    password: str = setting("", "Password, for brokers that need one.", secret="hidden")
    client_id: str = setting(
        "", "MQTT client id. Empty: coapbridge-<host name>-<hash of host name and absolute "
        "DATA_DIR>, the same on every restart and different for every installation; two "
        "clients with one id take each other's session over and the broker drops them in "
        "turn.")
    protocol: str = setting("5", "MQTT version: 5 or 3.1.1.", choices=("5", "3.1.1"))
    keepalive: int = setting(60, "Keep-alive interval.", low=1, high=65535, unit="s",
                             why="MQTT's keep-alive is 16 bits")
    connect_timeout: float = setting(10.0, "Seconds a connection attempt that hangs (TCP "
                                     "connect, TLS handshake or CONNACK) may take.",
                                     low=0, high=600, above=True, unit="s")
    puback_timeout: float = setting(
        10.0, "Seconds a publish may wait for the broker's PUBACK; a stored uplink's PUBACK "
        "overdue by more drops and redoes the connection. Formerly mqtt.ack_timeout / "
        "MQTT_ACK_TIMEOUT, still read with a deprecation warning.",
        low=0, high=3600, above=True, unit="s", deprecated=("MQTT_ACK_TIMEOUT",))
    max_packet_size: int = setting(
        65536, "The platform's largest MQTT packet (ThingsBoard: NETTY_MAX_PAYLOAD_SIZE, "
        "65536). Larger uplinks get 4.13 and are never published.",
        low=1024, high=MQTT_MAX_PACKET, unit="bytes",
        why="MQTT packets cannot exceed 268435455 bytes")
    max_inflight: int = setting(100, "Publishes awaiting their PUBACK at once.", low=1,
                                high=65535, why="MQTT's Receive Maximum is 16 bits")
    reconnect_min_delay: float = setting(1.0, "Reconnect backoff: the first delay (doubling, "
                                         "with jitter).", low=0, high=3600, above=True,
                                         unit="s")
    reconnect_max_delay: float = setting(60.0, "Reconnect backoff: the longest delay.",
                                         low=0, high=86400, above=True, unit="s")
    tls: TlsConfig = section(TlsConfig)

    @property
    def mqtt5(self) -> bool:
        return self.protocol == "5"


def check(config: Any, problems: Problems) -> None:
    mqtt = config.mqtt
    if problems.fine("mqtt.reconnect_min_delay", "mqtt.reconnect_max_delay") and \
            mqtt.reconnect_max_delay < mqtt.reconnect_min_delay:
        problems.add("mqtt.reconnect_max_delay",
                     "mqtt.reconnect_max_delay: must not be less than reconnect_min_delay")
    if mqtt.tls.enabled and bool(mqtt.tls.cert_file) != bool(mqtt.tls.key_file):
        problems.add("mqtt.tls.key_file", "mqtt.tls: cert_file and key_file must be given "
                     "together")
