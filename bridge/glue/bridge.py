"""``Bridge``: builds the core and joins it to the CoAP requests, the outbox and the MQTT link.

It owns the MQTT side of the glue (the gateway link's events in, publishes
out, paho mid -> the core's publish ref) and the core's timer; each other
concern is one part from this package (the metrics: ``metrics``; the transports
running now: ``transports``; the registry changes the platform asks for:
``platform_changes``), and ``dispatch`` maps every core action to its part. The
transports are not built here: each is a service (``bridge/service.py``) that
joins ``transports`` while it runs.
"""

from __future__ import annotations

import dataclasses
import random
import socket
from typing import Any, Dict, List, Optional

from twisted.internet import defer
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
from ..edge.mqtt import MqttLink
from ..edge import protoc
from ..edge.outbox import Outbox
from ..edge.ota import PackageStore
from ..edge.provision import Provisioner
from ..edge.short_session import ShortSessions
from ..edge.timer import repeating
from ..logs import logger
from ..registry import Registry
from .admission import PendingAdmission
from .coap_requests import CoapRequests
from .commit import OutboxCommit
from .dispatch import ActionDispatcher
from .lookup import RegistryView
from .metrics import Metrics
from .notifications import Notifications
from .readiness import Readiness
from .platform_changes import PlatformChanges
from .relations import relation_keeper
from .transports import Transports
from .x509register import AutoRegistration

log = logger("bridge")

SUBSCRIPTIONS = [gateway.ATTRIBUTES, gateway.ATTRIBUTES_RESPONSE, gateway.RPC,
                 GATEWAY_RPC_REQUEST_PREFIX + "+", GATEWAY_RPC_RESPONSE_PREFIX + "+"]
DRAIN_POLL = 0.05  # s between looks at what waits for a PUBACK while stopping


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
        self.transports = Transports()  # each transport service joins while it runs
        self.notifications = Notifications(reactor, self.transports, self.notified)
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
        self.mids: Dict[int, int] = {}  # paho mid -> core publish ref
        self.readiness = Readiness(reactor, self.transports, self.outbox_commit, self.core,
                                   self.registry_view, self.link,
                                   config.health.ready_requires_mqtt)
        self.metrics = Metrics(self.core, self.requests, self.outbox_commit,
                               self.auto_registration, self.link, self.readiness,
                               self.registry_view, self.provisioner, self.packages,
                               self.platform_changes, self.transports)
        self.prometheus = self.metrics.prometheus
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

    @property
    def outbox(self) -> Optional[Outbox]:
        return self.outbox_commit.outbox

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
        poll = repeating(self.reactor, check)
        poll.start(DRAIN_POLL, now=True).addErrback(failed)
        return done

    # -- metrics -----------------------------------------------------------------------

    def _observe_delivered(self, actions: List[Any], now: float) -> None:
        """Store-to-PUBACK time of each uplink a PUBACK delivered (its ``Delete``)."""
        for action in actions:
            if type(action) is Delete:
                for created in action.created:
                    self._delivered(now - created)


_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}


def _log(entry: Log) -> None:
    """A ``Log`` action from the core: its format, with its fields as the event's."""
    if entry.error is not None:  # a bug the core contained: its traceback, once
        log.failure(entry.format, failure=Failure(entry.error), level=LogLevel.error,
                    **entry.fields)
        return
    log.emit(_LEVELS.get(entry.level, LogLevel.info), entry.format, **entry.fields)
