"""The bridge's metrics: every value read from the parts at scrape time, by name.

``Metrics`` holds the Prometheus registry (``edge/metrics.py``: ``BridgeMetrics``, with the
DTLS handshake histograms while CoAPs runs) and builds the families from the core's
counters and gauges, the glue's parts and the transports running now (``transports.py``:
plain CoAP's and CoAPs' datagram counters, the DTLS server's, the RFC 8323 hub's). It was
``Bridge``'s half that reads; ``Bridge`` keeps the MQTT side (issue #28.4).
"""

from __future__ import annotations

from typing import Any, Dict

from ..dtls.events import DtlsPeer
from ..edge.metrics import BridgeMetrics, HandshakeMetrics, Labelled
from ..edge.stream import StreamPeer

REQUEST_LABELS = ("route", "code", "transport")
DTLS_COUNTERS = {
    "hello_verify_sent": "HelloVerifyRequests sent (ClientHellos without a valid cookie)",
    "handshakes_full": "full DTLS handshakes completed",
    "handshakes_resumed": "resumed DTLS handshakes completed",
    "handshakes_failed": "DTLS handshakes failed (alert sent or received)",
    "handshake_timeouts": "DTLS handshakes reaped at dtls.handshake_timeout",
    "refused_full": "DTLS handshakes refused: dtls.max_sessions reached",
    "refused_rate": "DTLS handshakes refused: dtls.handshake_rate of the address",
    "refused_address": "DTLS handshakes refused: dtls.max_handshakes_per_address in "
                       "progress from the address",
    "handshakes_evicted": "half-open DTLS handshakes dropped for newer ones at "
                          "dtls.max_handshakes",
    "dropped": "datagrams on the DTLS port dropped (no session and no ClientHello)",
    "alerts": "DTLS sessions ended by an alert or a broken record",
    "unknown_psk_identity": "PSK identities not in the registry",
    "idle_ended": "DTLS sessions ended at dtls.idle_timeout",
    "ended_by_registry": "DTLS sessions ended: their credential left the registry",
    "replaced": "DTLS sessions replaced by a new handshake from their address",
}


class Metrics:
    """Name -> (type, help, value) of every metric (see the module)."""

    def __init__(self, core: Any, requests: Any, outbox_commit: Any, auto_registration: Any,
                 link: Any, readiness: Any, registry_view: Any, provisioner: Any,
                 packages: Any, platform_changes: Any, transports: Any):
        self.core = core
        self.requests = requests
        self.outbox_commit = outbox_commit
        self.auto_registration = auto_registration
        self.link = link
        self.readiness = readiness
        self.registry_view = registry_view
        self.provisioner = provisioner
        self.packages = packages
        self.platform_changes = platform_changes
        self.transports = transports
        self.handshakes = HandshakeMetrics()  # CoAPs' handshake durations, while it runs
        self.prometheus = BridgeMetrics(  # its own registry: see edge/metrics.py
            self.values, lambda: self.handshakes.families() if DtlsPeer in transports else ())

    def _registry_reachable(self) -> bool:
        registry = self.registry_view.registry
        return registry is not None and registry.reachable()

    def values(self) -> Dict[str, Any]:
        """Every metric: name -> (type, help, value), read from the parts at scrape time."""
        stats, gauges = self.core.stats, self.core.gauges()
        return {**self._traffic_metrics(stats), **self._refusal_metrics(stats),
                **self._state_metrics(stats, gauges), **self._dtls_metrics(),
                **self._reliable_metrics()}

    def _traffic_metrics(self, stats: Dict[str, int]) -> Dict[str, Any]:
        """Requests, uplinks and the outbox's work."""
        protocol, dtls = self.transports.get(tuple), self.transports.get(DtlsPeer)
        return {
            "coap_requests_total": ("counter", "CoAP requests answered, by route, answer "
                                    "code and transport", Labelled(
                                        REQUEST_LABELS, self.requests.counts.samples())),
            "coap_errors_total": ("counter", "CoAP requests answered 4.xx or 5.xx, by route, "
                                  "code and transport", Labelled(
                                      REQUEST_LABELS, self.requests.counts.samples(True))),
            "coap_malformed_total": ("counter", "datagrams dropped or reset as malformed "
                                     "(CoAP and CoAPs)",
                                     (protocol.malformed if protocol is not None else 0)
                                     + (dtls.coap.malformed if dtls is not None
                                        else 0)),
            "coap_retransmissions_total": ("counter", "CON messages sent again for want of "
                                           "an ACK (notifications, separate responses; "
                                           "CoAP and CoAPs)",
                                           (protocol.retransmissions
                                            if protocol is not None else 0)
                                           + (dtls.coap.retransmissions
                                              if dtls is not None else 0)),
            "coap_send_failed_total": ("counter", "datagrams the operating system refused to "
                                       "send (dropped as lost), by transport and errno",
                                       Labelled(("transport", "reason"), (
                                           (protocol.send_failures.samples()
                                            if protocol is not None else ())
                                           + (dtls.send_failures.samples()
                                              if dtls is not None else ())))),
            "uplinks_acknowledged_total": ("counter", "uplinks stored and answered 2.01",
                                           stats["acknowledged"]),
            "uplinks_delivered_total": ("counter", "stored uplinks acknowledged by the broker",
                                        stats["delivered"]),
            "uplink_publishes_total": ("counter", "acknowledged publishes that carried stored "
                                       "uplinks (delivered / publishes = mean batch size)",
                                       stats["publishes"]),
            "uplinks_dead_lettered_total": ("counter", "stored uplinks the platform refused",
                                            stats["dead_lettered"]),
            "outbox_commits_total": ("counter", "outbox transactions, each one sync to disk "
                                     "(uplinks acknowledged / commits = group size)",
                                     self.outbox_commit.commits),
            "outbox_refused_full_total": ("counter", "uplinks refused with 5.03, outbox full",
                                          stats["refused_full"]),
            "outbox_store_failed_total": ("counter", "uplinks the outbox could not store",
                                          stats["store_failed"]),
        }

    def _refusal_metrics(self, stats: Dict[str, int]) -> Dict[str, Any]:
        """Requests refused (rate, credentials) and server RPCs dropped."""
        return {
            "rate_limited_total": ("counter", "requests answered 4.29", stats["rate_limited"]),
            "unknown_token_total": ("counter", "requests with an unknown access token (4.01)",
                                    stats["unknown_token"]),
            "unknown_credential_total": ("counter", "requests over DTLS with an unknown "
                                         "certificate or PSK identity (4.01)",
                                         stats["unknown_credential"]),
            "credential_mismatch_total": ("counter", "requests over DTLS whose token names "
                                          "another device than the session's credential (4.01)",
                                          stats["credential_mismatch"]),
            "devices_auto_registered_total": ("counter", "devices registered by their "
                                              "certificate (dtls.x509.auto_register)",
                                              self.auto_registration.registered),
            "rpc_expired_total": ("counter", "server RPCs dropped undelivered after "
                                  "platform.rpc_queue_ttl", stats["rpc_expired"]),
            "rpc_dropped_total": ("counter", "server RPCs dropped: platform.rpc_queue_size "
                                  "already held for the device", stats["rpc_dropped"]),
        }

    def _state_metrics(self, stats: Dict[str, int], gauges: Dict[str, int]) -> Dict[str, Any]:
        """What is waiting and what is up, and the edges' own counters."""
        return {
            "outbox_entries": ("gauge", "uplinks waiting in the outbox",
                               gauges["outbox_entries"]),
            "outbox_bytes": ("gauge", "payload bytes waiting in the outbox",
                             gauges["outbox_bytes"]),
            "inflight_publishes": ("gauge", "publishes waiting for a PUBACK",
                                   gauges["inflight_publishes"]),
            "observers": ("gauge", "observe relations", gauges["observers"]),
            "devices_connected": ("gauge", "devices connected on the gateway session",
                                  gauges["devices_connected"]),
            "devices_asleep": ("gauge", "PSM and eDRX devices past their window (asleep)",
                               gauges["devices_asleep"]),
            "power_asleep_total": ("counter", "PSM and eDRX devices falling asleep (their "
                                   "window ended)", stats["power_asleep"]),
            "power_awake_total": ("counter", "sleeping PSM and eDRX devices waking (a request "
                                  "from them)", stats["power_awake"]),
            "notifications_withdrawn_total": ("counter", "CON notifications whose "
                                              "retransmissions stopped: their PSM device fell "
                                              "asleep (sent again when it wakes)",
                                              stats["notifications_withdrawn"]),
            "mqtt_connected": ("gauge", "1 while the gateway connection is up",
                               1 if self.link.connected else 0),
            "ready": ("gauge", "1 while /readyz says ready (the bridge can accept and store "
                      "uplinks)", 0 if self.readiness.check()[0] else 1),
            "registry_reachable": ("gauge", "1 while the device registry answers (without it "
                                   "the bridge serves its last copy)",
                                   1 if self._registry_reachable() else 0),
            "provisioning_busy_total": ("counter", "provisioning requests answered 5.03: "
                                        "provisioning.max_concurrent in progress",
                                        self.provisioner.refused),
            "mqtt_messages_skipped_total": ("counter", "messages from the broker skipped as "
                                            "unreadable (not JSON, nested too deep) or failing",
                                            stats["downstream_skipped"] + self.link.failed_messages),
            "ota_fetches_total": ("counter", "packages fetched from their source",
                                  self.packages.fetches),
            "registry_changes_waiting": ("gauge", "platform renames and deletes journaled in "
                                         "DATA_DIR, not yet in the shared registry (the same "
                                         "file for every worker)",
                                         self.platform_changes.waiting()),
        }

    def _dtls_metrics(self) -> Dict[str, Any]:
        transport = self.transports.get(DtlsPeer)
        if transport is None:
            return {}
        stats = transport.stats
        out = {"dtls_%s_total" % name: ("counter", text, stats[name])
               for name, text in DTLS_COUNTERS.items()}
        out["dtls_sessions"] = ("gauge", "established DTLS sessions",
                                transport.sessions_established)
        out["dtls_handshakes_in_progress"] = ("gauge", "DTLS handshakes in progress",
                                              transport.sessions_handshaking)
        return out

    def _reliable_metrics(self) -> Dict[str, Any]:
        hub = self.transports.get(StreamPeer)
        if hub is None:
            return {}
        return {"reliable_connections": ("gauge", "CoAP connections over TCP, TLS and "
                                         "WebSockets (RFC 8323)", hub.connections),
                "reliable_refused_total": ("counter", "RFC 8323 connections refused: "
                                           "reliable.max_connections(_per_address)",
                                           hub.refused),
                "reliable_aborted_total": ("counter", "RFC 8323 connections ended by an "
                                           "Abort (ours or the peer's)", hub.aborted)}
