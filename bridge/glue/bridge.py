"""``Bridge``: builds the core and joins it to the CoAP requests, the outbox and the MQTT link.

It owns the MQTT side of the glue (the gateway link's events in, publishes
out, paho mid -> the core's publish ref), the core's timer and the metrics;
each other concern is one part from this package (the registry changes the
platform asks for: ``platform_changes``), and ``dispatch`` maps every core
action to its part.
"""

from __future__ import annotations

import dataclasses
import random
import socket
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ..coap.message import make_response
from ..settings import Config, worker_client_id
from ..core import codes, gateway
from ..core.actions import (Authenticated, Created, DeadLetter, Delete, DeleteDevice,
                            LoadBacklog, Log, Notify, Provision, Publish, RenameDevice, Reply,
                            ResetLink, ServePackage, Store, StoreMany, Withdraw)
from ..core.formats import BuildContext, FormatOf, fixed
from ..core.formats.efento_proto import EfentoMessages
from ..core.formats.json import JsonFormat
from ..core.formats.registry import INSTALLED, FormatRegistry, formats_of
from ..core.auth import CredentialLookups
from ..core.downstream import GATEWAY_RPC_REQUEST_PREFIX, GATEWAY_RPC_RESPONSE_PREFIX
from ..core.session import GatewayCore
from ..edge.metrics import BridgeMetrics, HandshakeMetrics, Labelled
from ..edge.mqtt import MqttLink
from ..edge import protoc
from ..edge.outbox import Outbox
from ..edge.ota import PackageStore
from ..edge.provision import Provisioner
from ..edge.short_session import ShortSessions
from ..logs import logger
from ..registry import Registry
from .admission import PendingAdmission
from .coap_requests import CoapRequests
from .commit import OutboxCommit
from .dispatch import ActionDispatcher
from .lookup import RegistryView
from .notifications import Notifications
from .readiness import Readiness
from .platform_changes import PlatformChanges
from .relations import relation_keeper
from .x509register import AutoRegistration

log = logger("bridge")

SUBSCRIPTIONS = [gateway.ATTRIBUTES, gateway.ATTRIBUTES_RESPONSE, gateway.RPC,
                 GATEWAY_RPC_REQUEST_PREFIX + "+", GATEWAY_RPC_RESPONSE_PREFIX + "+"]
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
REQUEST_LABELS = ("route", "code", "transport")
DRAIN_POLL = 0.05  # s between looks at what waits for a PUBACK while stopping
# s a failed outbox write keeps the bridge unready (a later write that succeeds ends it at
# once): with no traffic, nothing else would try the disk again
OUTBOX_FAILURE_HOLD = 10.0


def fixed_messages() -> Optional[fixed.FixedMessages]:
    """ThingsBoard's fixed messages (compiled by protoc, needed by PROTOBUF profiles and by
    protobuf provisioning requests); None without protoc and PROTOBUF profiles: then
    provisioning reads JSON only (the configuration check needs protoc for the profiles)."""
    try:
        return protoc.fixed_messages()
    except protoc.ProtocMissing:
        log.info("protoc is not installed: provisioning requests are read as JSON only")
        return None


def format_of(config: Config, formats: Optional[FormatRegistry] = None) -> FormatOf:
    """Device type -> its payload format: the one its ``device_profiles`` entry names in
    ``formats`` (the registry: the installed formats), built by the format's factory (the
    schemas compiled and checked when the configuration was loaded), else JSON."""
    context = BuildContext(JsonFormat(config.limits.json_max_depth), protoc)
    return formats_of(formats or INSTALLED, config.device_profiles, context)


def efento_messages() -> Optional[EfentoMessages]:
    """Efento's sensor messages, compiled by protoc; None without protoc (an EFENTO profile
    needs it: the configuration check says so), when ``/efento/*`` answers 5.03."""
    try:
        return protoc.efento_messages()
    except protoc.ProtocMissing:
        return None


def make_core(config: Config, lookup: Any,
              credentials: Optional[CredentialLookups] = None,
              messages: Optional[fixed.FixedMessages] = None) -> GatewayCore:
    """The one place the core is built (``messages``: ThingsBoard's fixed messages, for
    provisioning requests that are not JSON)."""
    return GatewayCore(config, lookup, format_of(config), credentials, messages,
                       efento_messages())


class Bridge:
    """Runtime glue: edge events in, core actions out to the edges."""

    def __init__(self, config: Config, reactor: Any, rng: Optional[random.Random] = None,
                 worker: int = 0):
        self.config = config
        self.worker = worker  # 1..coap.workers under the supervisor; 0: the single process
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.registry_view = RegistryView(reactor)
        fixed = fixed_messages()
        self.core = make_core(config, self.registry_view.get,
                              self.registry_view.credential_lookups(), fixed)
        self.auto_registration = AutoRegistration(config, self.registry_view)
        self.dispatcher = ActionDispatcher()
        self.apply = self.dispatcher.apply
        self.outbox_commit = OutboxCommit(self.core, reactor, self.apply, self._before_write)
        limits = config.limits
        self.requests = CoapRequests(
            self.core, reactor,
            PendingAdmission(limits.max_pending_per_peer, limits.max_pending_per_address),
            self.registry_view, self.apply, self.outbox_commit.schedule,
            self.auto_registration.ensure if config.dtls.x509.auto_register else None)
        self.notifications = Notifications(reactor)
        self.notifications.on_result = self.notified
        self.platform_changes = PlatformChanges(self.registry_view, self.commit,
                                                lambda: self.outbox)
        # observe relations kept in DATA_DIR across a restart
        self.relations = relation_keeper(self.core, reactor, self.registry_view, self.apply,
                                         config, worker)
        self.sessions = ShortSessions()  # OTA downloads and upstream provisioning
        self.provisioner = Provisioner(config, reactor, self.registry_view.write,
                                       self.requests.answer_json, self.sessions, fixed)
        self.packages = PackageStore(config, reactor, self.reconnect_device, self.sessions)
        mqtt = dataclasses.replace(config.mqtt,
                                   client_id=worker_client_id(config, socket.gethostname(),
                                                              worker))
        self.link = MqttLink(reactor, mqtt, self, subscriptions=SUBSCRIPTIONS, rng=self.rng)
        self.coap: Optional[Any] = None  # the CoAP transport (BridgeCoap), once listening
        self.coap_listening = False  # set by the CoAP service while its port reads
        self.reliable: Optional[Any] = None  # the RFC 8323 connections (stream.Hub), if any
        self.dtls: Optional[Any] = None  # the DTLS transport (DtlsTransport), once listening
        self.mids: Dict[int, int] = {}  # paho mid -> core publish ref
        self.handshakes = HandshakeMetrics()  # the DTLS transport's on_handshake, once on
        self.prometheus = BridgeMetrics(  # its own registry: see edge/metrics.py
            self.metrics, lambda: self.handshakes.families() if self.dtls is not None else ())
        self.readiness = Readiness(self, config.health.ready_requires_mqtt)
        self.requests.answered = self.prometheus.request_seconds.observe
        self._delivered = self.prometheus.delivery_seconds.observe
        self._route_actions()

    def _route_actions(self) -> None:
        """Which edge carries out each kind of the core's actions."""
        requests, outbox = self.requests, self.outbox_commit
        self.dispatcher.register({
            Reply: requests.reply,
            Created: requests.created,
            Publish: self._publish,
            Store: outbox.store,
            StoreMany: outbox.store,
            Delete: outbox.delete,
            DeadLetter: outbox.dead_letter,
            LoadBacklog: outbox.load_backlog,
            Provision: lambda action: self.provisioner.handle(action.ref, action.request),
            ServePackage: self._serve_package,
            ResetLink: self._reset_link,
            Notify: self.notifications.queue,
            Withdraw: self.notifications.withdraw,
            Log: _log,
            RenameDevice: self.platform_changes.rename,
            DeleteDevice: self.platform_changes.delete,
            Authenticated: requests.authenticated,
        })

    @property
    def registry(self) -> Optional[Registry]:
        return self.registry_view.registry

    @registry.setter
    def registry(self, registry: Optional[Registry]) -> None:
        self.registry_view.attach(registry)

    @property
    def outbox(self) -> Optional[Outbox]:
        return self.outbox_commit.outbox

    @outbox.setter
    def outbox(self, outbox: Optional[Outbox]) -> None:
        self.outbox_commit.outbox = outbox

    def now(self) -> float:
        return self.reactor.seconds()

    def handle_coap(self, message: Any) -> defer.Deferred:
        """The CoAP transport's request handler."""
        return self.requests.handle(message)

    def _before_write(self) -> None:
        if self.requests.uplinks:
            self.requests.flush_uplinks()

    def commit(self) -> None:
        self.outbox_commit.commit()

    # -- MQTT edge (LinkListener) ------------------------------------------------------

    def link_up(self) -> None:
        self.apply(self.core.on_link_up(self.now()))
        self.readiness.watch(self.now(), changed=True)

    def link_down(self, reason: str) -> None:
        self.mids.clear()
        self.apply(self.core.on_link_down(self.now()))
        self.readiness.watch(self.now(), changed=True)

    def published(self, mid: int, reason_code: int) -> None:
        ref = self.mids.pop(mid, None)
        if ref is not None:
            now = self.now()
            actions = self.core.on_published(ref, reason_code, now)
            if actions:
                self._observe_delivered(actions, now)
            self.apply(actions)

    def message(self, topic: str, payload: bytes) -> None:
        log.debug("Downstream {topic} ({size} bytes)", topic=topic, size=len(payload))
        self.apply(self.core.on_message(topic, payload, self.now()))

    def notified(self, ref: int, outcome: str) -> None:
        self.apply(self.core.on_notified(ref, outcome, self.now()))

    def peer_gone(self, remote: Any) -> None:
        self.apply(self.core.on_peer_gone(remote, self.now()))

    def tick(self) -> None:
        self.registry_view.refresh()  # removed credentials end their sessions without a request
        now = self.now()
        self.apply(self.core.on_tick(now))
        self.readiness.watch(now)

    def reconnect_device(self, name: str) -> None:
        self.apply(self.core.reconnect_device(name, self.now()))

    # -- action handlers ---------------------------------------------------------------

    def _publish(self, action: Publish) -> None:
        mid = self.link.publish(action.topic, action.payload)
        if mid is None:
            self.apply(self.core.on_not_sent(action.ref, self.now()))
        else:
            self.mids[mid] = action.ref
            log.debug("Published {topic} for {device} (mid {mid})", topic=action.topic,
                      device=action.device, mid=mid)

    def _serve_package(self, action: ServePackage) -> None:
        d = self.packages.serve(action)
        d.addCallback(lambda message: self.requests.answer(action.ref, message))
        d.addErrback(self._serve_failed, action)

    def _serve_failed(self, failure: Failure, action: ServePackage) -> None:
        log.failure("Serving a package to {device} failed", failure=failure,
                    device=action.device)
        self.requests.answer(action.ref, make_response(
            codes.INTERNAL_SERVER_ERROR, b"internal error", codes.TEXT_PLAIN))

    def _reset_link(self, action: ResetLink) -> None:
        log.warn("Resetting the MQTT connection: {reason}", reason=action.reason)
        self.link.reset()

    # -- stopping ----------------------------------------------------------------------

    def drain(self, timeout: float) -> defer.Deferred:
        """Stop publishing new entries; fire when none waits for a PUBACK (or at ``timeout``)."""
        self.core.draining = True
        done = defer.Deferred()
        deadline = self.now() + timeout

        def check() -> None:
            if not self.core.gauges()["inflight_publishes"] or self.now() >= deadline \
                    or not self.link.connected:
                poll.stop()
                self.commit()
                done.callback(None)

        def failed(failure: Failure) -> None:
            log.failure("Waiting for the last PUBACKs failed", failure=failure)
            if not done.called:
                done.callback(None)
        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(DRAIN_POLL, now=True).addErrback(failed)
        return done

    # -- metrics and readiness ---------------------------------------------------------

    def _observe_delivered(self, actions: List[Any], now: float) -> None:
        """Store-to-PUBACK time of each uplink a PUBACK delivered (its ``Delete``)."""
        for action in actions:
            if type(action) is Delete:
                for created in action.created:
                    self._delivered(now - created)

    def outbox_problem(self) -> Optional[str]:
        """Why the outbox cannot take uplinks now (``readiness``), or None: not open, a
        bound reached, or a write failed in the last ``OUTBOX_FAILURE_HOLD`` s."""
        if self.outbox is None:
            return "outbox not open"
        now = self.now()
        failed = self.outbox_commit.failed
        if failed is not None and now - failed[1] < OUTBOX_FAILURE_HOLD:
            return "outbox not writable (%s)" % failed[0]
        full = self.core.outbox_full(now)
        return "outbox full (%s)" % full if full is not None else None

    def _registry_reachable(self) -> bool:
        registry = self.registry_view.registry
        return registry is not None and registry.reachable()

    def metrics(self) -> Dict[str, Any]:
        """Every metric: name -> (type, help, value), read from the parts at scrape time."""
        stats, gauges = self.core.stats, self.core.gauges()
        return {**self._traffic_metrics(stats), **self._refusal_metrics(stats),
                **self._state_metrics(stats, gauges), **self._dtls_metrics(),
                **self._reliable_metrics()}

    def _traffic_metrics(self, stats: Dict[str, int]) -> Dict[str, Any]:
        """Requests, uplinks and the outbox's work."""
        protocol = self.coap
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
                                     + (self.dtls.coap.malformed if self.dtls is not None
                                        else 0)),
            "coap_retransmissions_total": ("counter", "CON messages sent again for want of "
                                           "an ACK (notifications, separate responses; "
                                           "CoAP and CoAPs)",
                                           (protocol.retransmissions
                                            if protocol is not None else 0)
                                           + (self.dtls.coap.retransmissions
                                              if self.dtls is not None else 0)),
            "coap_send_failed_total": ("counter", "datagrams the operating system refused to "
                                       "send (dropped as lost), by transport and errno",
                                       Labelled(("transport", "reason"), (
                                           (protocol.send_failures.samples()
                                            if protocol is not None else ())
                                           + (self.dtls.send_failures.samples()
                                              if self.dtls is not None else ())))),
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
        transport = self.dtls
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
        hub = self.reliable
        if hub is None:
            return {}
        return {"reliable_connections": ("gauge", "CoAP connections over TCP, TLS and "
                                         "WebSockets (RFC 8323)", hub.connections),
                "reliable_refused_total": ("counter", "RFC 8323 connections refused: "
                                           "reliable.max_connections(_per_address)",
                                           hub.refused),
                "reliable_aborted_total": ("counter", "RFC 8323 connections ended by an "
                                           "Abort (ours or the peer's)", hub.aborted)}


_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}


def _log(entry: Log) -> None:
    """A ``Log`` action from the core: its format, with its fields as the event's."""
    if entry.error is not None:  # a bug the core contained: its traceback, once
        log.failure(entry.format, failure=Failure(entry.error), level=LogLevel.error,
                    **entry.fields)
        return
    log.emit(_LEVELS.get(entry.level, LogLevel.info), entry.format, **entry.fields)
