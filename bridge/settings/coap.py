"""``coap:``: the CoAP listener (RFC 7252 over UDP) and its message layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Problems, setting

MAX_WORKERS = 256


@dataclass(frozen=True)
class CoapConfig:
    """CoAP over UDP: where devices send their requests, and the message layer's timers
    and bounds (RFC 7252)."""
    bind_address: str = setting(
        "0.0.0.0", "Address for devices (an IP address of this host). 0.0.0.0: every IPv4 "
        "address; :: listens on IPv6 and IPv4 (dual stack).", address=True)
    bind_port: int = setting(5683, "UDP port for devices.", low=1, high=65535, port=True)
    empty_ack_delay: float = setting(
        0.5, "Seconds to wait for an answer before sending an empty ACK and answering "
        "separately (RFC 7252 §5.2.2). Must be below coap.ack_timeout (the client's "
        "retransmission timeout), else the client retransmits first.",
        low=0, high=60, above=True, unit="s")
    exchange_lifetime: float = setting(
        247.0, "Seconds a request's message ID is remembered for deduplication (RFC 7252 "
        "EXCHANGE_LIFETIME).", low=0, high=3600, above=True, unit="s")
    max_observers: int = setting(
        100000, "Observe relations kept at most (one per device for /attributes and one for "
        "/rpc). Past that a registration is answered without Observe (RFC 7641 §4.1).",
        low=1, high=10_000_000)
    max_body: int = setting(
        65536, "Largest request body accepted, also when sent in Block1 blocks. Larger gets "
        "4.13; a body is held in memory until it is stored.", low=1, high=16 * 1024 * 1024,
        unit="bytes", why="16 MiB; the platform's packet limit is 64 KiB by default")
    ack_timeout: float = setting(
        2.0, "Seconds before a CON notification's first retransmission (RFC 7252 §4.8: x1 to "
        "x1.5 random, doubling).", low=0, high=60, above=True, unit="s")
    max_retransmit: int = setting(
        4, "Retransmissions of a CON notification before the observer is dropped (RFC 7252 "
        "§4.8).", low=0, high=10)
    con_notification_interval: float = setting(
        86400.0, "Seconds between CON notifications to a NON observer at least, so that dead "
        "observers are found (RFC 7641 §4.5).", low=0, high=30 * 86400, above=True, unit="s")
    workers: int = setting(
        1, "Worker processes on this host. 1: one process; with N > 1 the bridge is a "
        "supervisor that binds N sockets on the UDP port with SO_REUSEPORT and hands one to "
        "each of N workers (the kernel keeps each device's source address and port on one "
        "worker, across a worker's restart too) and one listening socket of each reliable.* "
        "listener that every worker accepts from, each with its own MQTT client id "
        "(mqtt.client_id plus -w1, -w2...), outbox (DATA_DIR/outbox-w1.sqlite3...) and "
        "observe relations (DATA_DIR/observers-w1.sqlite3...), all sharing the registry; "
        "the supervisor serves the metrics port for all of them and restarts a worker that "
        "dies, which takes its observers over. Changing it re-spreads the devices over the "
        "workers and ends their observe relations with 5.03 (docs/deployment.md).",
        low=1, high=MAX_WORKERS)
    psm_activity_timer: float = setting(
        10.0, "Seconds a PSM device is reachable after its last request, when its own and its "
        "profile's settings give no psmActivityTimer (ThingsBoard's "
        "transport.coap.psm_activity_timer, there in ms). Outside it, the platform's "
        "attribute changes for the device are merged and its RPCs wait; both go at its next "
        "request (docs/device-api.md, Power saving).", low=0, high=7 * 86400, above=True,
        unit="s")
    paging_transmission_window: float = setting(
        10.0, "Seconds an eDRX device is reachable after its last request, when its settings "
        "give no pagingTransmissionWindow (ThingsBoard's "
        "transport.coap.paging_transmission_window, there in ms); after it one downlink "
        "still goes, the others wait for its next request.", low=0, high=7 * 86400,
        above=True, unit="s")
    transport_log: bool = setting(
        False, "Write each PSM and eDRX device's sleep and wake as its telemetry transportLog "
        "('Info: Client is sleeping!', 'Info: Client is awake!'), as ThingsBoard does with "
        "transport.log.enabled: two more messages per device cycle.")


def check(config: Any, problems: Problems) -> None:
    coap = config.coap
    if problems.fine("coap.empty_ack_delay", "coap.ack_timeout") and \
            coap.empty_ack_delay >= coap.ack_timeout:
        # the empty ACK must reach the client before it retransmits (RFC 7252 §5.2.2)
        problems.add("coap.empty_ack_delay",
                     "coap.empty_ack_delay: must be less than coap.ack_timeout (%s s), got %s"
                     % (coap.ack_timeout, coap.empty_ack_delay))
