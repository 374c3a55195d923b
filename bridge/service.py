"""The service tree: the runtime that joins the CoAP edge, the core and the MQTT edge.

``BridgeService`` opens the registry, then starts the MQTT link, then listens
for CoAP; it stops in reverse (CoAP first, so no new request arrives while
MQTT closes). Only the composition root (``tap.py``) picks the reactor.
"""

from __future__ import annotations

import dataclasses
import random
import socket
import sqlite3
from typing import Any, Callable, Dict, List, Optional, Union

import txthings.coap as txcoap
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from .config import Config, StartupError, gateway_client_id
from .core import codes
from .core import gateway
from .core import routes
from .core.actions import (Created, DeadLetter, Delete, DeleteDevice, Device, LoadBacklog, Log,
                           Notify, Provision, Publish, RenameDevice, Reply, Request, ResetLink,
                           ServePackage, Store, StoreMany, Uplink)
from .core.downstream import GATEWAY_RPC_REQUEST_PREFIX, GATEWAY_RPC_RESPONSE_PREFIX
from .core.session import GatewayCore
from .coap.endpoint import Answer
from .edge import coap as coap_edge
from .edge.mqtt import MqttLink
from .edge.ota import PackageStore
from .edge.outbox import Outbox
from .edge.provision import Provisioner
from .logs import logger
from .registry import Registry, RegistryError

log = logger("bridge")

TICK_SECONDS = 0.25
SUBSCRIPTIONS = [gateway.ATTRIBUTES, gateway.ATTRIBUTES_RESPONSE, gateway.RPC,
                 GATEWAY_RPC_REQUEST_PREFIX + "+", GATEWAY_RPC_RESPONSE_PREFIX + "+"]
# The last Uri-Path of a plain uplink (POST /api/v1/{token}/<this>) -> its feature.
PLAIN_UPLINKS = {routes.TELEMETRY.encode(): routes.TELEMETRY,
                 routes.ATTRIBUTES.encode(): routes.ATTRIBUTES}


class Bridge:
    """Runtime glue: edge events in, core actions out to the edges."""

    def __init__(self, config: Config, reactor: Any, rng: Optional[random.Random] = None):
        self.config = config
        self.reactor = reactor
        self.registry: Optional[Registry] = None
        self.rng = rng or random.Random()
        self.core = GatewayCore(config, self.lookup)
        self.outbox: Optional[Outbox] = None
        self.provisioner = Provisioner(config, reactor, lambda: self.registry, self.answer_json)
        self.packages = PackageStore(config, reactor, self.reconnect_device)
        self._uplinks: List[Uplink] = []  # plain uplinks of this turn, for the core in one go
        self._stores: List[Any] = []  # Store and StoreMany actions of this turn, in order
        self._deletes: List[int] = []
        self._dead: List[DeadLetter] = []
        self._commit_call: Any = None
        mqtt = dataclasses.replace(config.mqtt,
                                   client_id=gateway_client_id(config, socket.gethostname()))
        self.link = MqttLink(reactor, mqtt, self, subscriptions=SUBSCRIPTIONS, rng=self.rng)
        self.coap: Optional[coap_edge.BridgeCoap] = None  # the UDP transport, once listening
        self._notifications: List[Notify] = []
        self._flush_call: Any = None
        # request ref -> [Deferred of the answer, source address, carries a valid token]
        self.requests: Dict[int, List[Any]] = {}
        self._looked_up = False
        self._registry_checked = False
        # requests being processed, per source endpoint (address, port) and per address
        self.pending_by_peer: Dict[Any, int] = {}
        self.pending_by_address: Dict[Any, int] = {}
        self.mids: Dict[int, int] = {}  # paho mid -> core publish ref
        self._next_request = 0
        self.counters: Dict[str, int] = {"requests": 0, "errors": 0, "commits": 0}

    def metrics(self) -> Dict[str, Any]:
        stats, gauges = self.core.stats, self.core.gauges()
        protocol = self.coap
        return {
            "coap_requests_total": ("counter", "CoAP requests handled", self.counters["requests"]),
            "coap_errors_total": ("counter", "requests answered 4.xx or 5.xx",
                                  self.counters["errors"]),
            "coap_malformed_total": ("counter", "datagrams dropped or reset as malformed",
                                     protocol.malformed if protocol is not None else 0),
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
                                     self.counters["commits"]),
            "outbox_refused_full_total": ("counter", "uplinks refused with 5.03, outbox full",
                                          stats["refused_full"]),
            "outbox_store_failed_total": ("counter", "uplinks the outbox could not store",
                                          stats["store_failed"]),
            "rate_limited_total": ("counter", "requests answered 4.29", stats["rate_limited"]),
            "unknown_token_total": ("counter", "requests with an unknown access token (4.01)",
                                    stats["unknown_token"]),
            "rpc_expired_total": ("counter", "server RPCs dropped undelivered after "
                                  "platform.rpc_queue_ttl", stats["rpc_expired"]),
            "rpc_dropped_total": ("counter", "server RPCs dropped: platform.rpc_queue_size "
                                  "already held for the device", stats["rpc_dropped"]),
            "outbox_entries": ("gauge", "uplinks waiting in the outbox",
                               gauges["outbox_entries"]),
            "outbox_bytes": ("gauge", "payload bytes waiting in the outbox",
                             gauges["outbox_bytes"]),
            "inflight_publishes": ("gauge", "publishes waiting for a PUBACK",
                                   gauges["inflight_publishes"]),
            "observers": ("gauge", "observe relations", gauges["observers"]),
            "devices_connected": ("gauge", "devices connected on the gateway session",
                                  gauges["devices_connected"]),
            "mqtt_connected": ("gauge", "1 while the gateway connection is up",
                               1 if self.link.connected else 0),
            "provisioning_busy_total": ("counter", "provisioning requests answered 5.03: "
                                        "provisioning.max_concurrent in progress",
                                        self.provisioner.refused),
            "mqtt_messages_skipped_total": ("counter", "messages from the broker skipped as "
                                            "unreadable (not JSON, nested too deep) or failing",
                                            stats["downstream_skipped"] + self.link.failed_messages),
            "ota_fetches_total": ("counter", "packages fetched from their source",
                                  self.packages.fetches),
        }

    def now(self) -> float:
        return self.reactor.seconds()

    def lookup(self, token: str) -> Optional[Device]:
        device = None
        if self.registry is not None:
            recheck = not self._registry_checked
            if recheck:  # the first lookup of this reactor turn looks at the file
                self._registry_checked = True
                self.reactor.callLater(0, self._registry_turn_over)
            device = self.registry.lookup(token, recheck)
        self._looked_up = device is not None
        return device

    def _registry_turn_over(self) -> None:
        self._registry_checked = False

    # -- CoAP edge -------------------------------------------------------------

    def handle_coap(self, message: txcoap.Message) -> defer.Deferred:
        self._next_request += 1
        self.counters["requests"] += 1
        ref = self._next_request
        refused = self._too_busy(message.remote)
        if refused is not None:
            self.counters["errors"] += 1
            return defer.succeed(Answer(coap_edge.make_response(
                codes.SERVICE_UNAVAILABLE, refused, codes.TEXT_PLAIN, max_age=1)))
        option = message.opt.getOption
        path = option(txcoap.URI_PATH)
        if message.code == txcoap.POST and path is not None and len(path) == 4:
            # the common upload goes to the core with the others of this turn (at commit)
            feature = PLAIN_UPLINKS.get(path[3].value)
            if feature is not None and path[0].value == b"api" and path[1].value == b"v1" \
                    and path[2].value:
                try:
                    token = path[2].value.decode()
                except UnicodeDecodeError:
                    pass  # answered 4.00 below
                else:
                    d = defer.Deferred()
                    self.requests[ref] = [d, message.remote, False]
                    self._hold(message.remote)
                    self._uplinks.append((ref, token, feature, message.payload, message.remote))
                    self._schedule_commit()
                    return d
        try:
            query = option(txcoap.URI_QUERY)
            content_format = option(txcoap.CONTENT_FORMAT)
            observe = option(txcoap.OBSERVE)
            block2 = message.opt.block2
            request = Request(
                ref, message.code,
                tuple([o.value.decode() for o in path]) if path else (),  # UTF-8, strict
                message.payload,
                tuple([o.value.decode() for o in query]) if query else (),
                content_format[0].value if content_format else None,
                observe[0].value if observe else None,
                message.token, message.remote, message.mtype == txcoap.CON,
                (block2.block_number, 1 << (block2.size_exponent + 4)) if block2 else None)
        except UnicodeDecodeError:
            return defer.succeed(Answer(coap_edge.make_response(
                codes.BAD_REQUEST, b"Uri-Path and Uri-Query must be UTF-8", codes.TEXT_PLAIN)))
        d = defer.Deferred()
        pending = [d, message.remote, False]
        self.requests[ref] = pending
        self._hold(message.remote)
        if self._uplinks:
            self._flush_uplinks()  # the core sees requests in the order they came
        self._looked_up = False
        try:
            actions = self.core.on_request(request, self.now())
        except Exception:
            # a bug, answered 5.00 by the engine: release what this request holds
            self._release(self.requests.pop(ref))
            raise
        pending[2] = self._looked_up  # the request carried a valid access token
        self.apply(actions)
        return d

    def _too_busy(self, remote: Any) -> Optional[bytes]:
        """Why a request from ``remote`` is refused 5.03, or None: at most
        ``limits.max_pending_per_peer`` requests of one source endpoint (address and
        port: one device) and ``max_pending_per_address`` of one address (the devices
        behind a carrier NAT) are processed at once."""
        limits = self.config.limits
        if self.pending_by_peer.get(remote, 0) >= limits.max_pending_per_peer:
            return b"too many requests in progress from this address and port"
        if self.pending_by_address.get(remote[0], 0) >= limits.max_pending_per_address:
            return b"too many requests in progress from this address"
        return None

    def _hold(self, remote: Any) -> None:
        by_peer, by_address = self.pending_by_peer, self.pending_by_address
        by_peer[remote] = by_peer.get(remote, 0) + 1
        by_address[remote[0]] = by_address.get(remote[0], 0) + 1

    def _flush_uplinks(self) -> None:
        uplinks, self._uplinks = self._uplinks, []
        try:
            actions = self.core.on_uplinks(uplinks, self.now())
        except Exception:
            # a bug outside any one uplink (the core answers one that fails 5.00 itself):
            # answered 5.00 like a failing request handler, and logged once
            log.failure("Handling {count} uplinks failed", count=len(uplinks))
            for uplink in uplinks:
                self.answer_request(uplink[0], coap_edge.make_response(
                    codes.INTERNAL_SERVER_ERROR, b"internal error", codes.TEXT_PLAIN))
            return
        self.apply(actions)

    # -- MQTT edge (LinkListener) ------------------------------------------------

    def link_up(self) -> None:
        self.apply(self.core.on_link_up(self.now()))

    def link_down(self, reason: str) -> None:
        self.mids.clear()
        self.apply(self.core.on_link_down(self.now()))

    def published(self, mid: int, reason_code: int) -> None:
        ref = self.mids.pop(mid, None)
        if ref is not None:
            self.apply(self.core.on_published(ref, reason_code, self.now()))

    def message(self, topic: str, payload: bytes) -> None:
        log.debug("Downstream {topic} ({size} bytes)", topic=topic, size=len(payload))
        self.apply(self.core.on_message(topic, payload, self.now()))

    def notified(self, ref: int, outcome: str) -> None:
        self.apply(self.core.on_notified(ref, outcome, self.now()))

    def tick(self) -> None:
        self.apply(self.core.on_tick(self.now()))

    # -- actions -----------------------------------------------------------------

    def apply(self, actions: List[Any]) -> None:
        for action in actions:
            if isinstance(action, Reply):
                self._reply(action)
            elif isinstance(action, Publish):
                mid = self.link.publish(action.topic, action.payload)
                if mid is None:
                    self.apply(self.core.on_not_sent(action.ref, self.now()))
                else:
                    self.mids[mid] = action.ref
                    log.debug("Published {topic} for {device} (mid {mid})", topic=action.topic,
                              device=action.device, mid=mid)
            elif isinstance(action, (StoreMany, Store)):
                self._stores.append(action)
                self._schedule_commit()
            elif isinstance(action, Created):
                for ref in action.refs:
                    self.answer_request(ref, coap_edge.make_response(codes.CREATED), True)
            elif isinstance(action, Delete):
                self._deletes.extend(action.ids)
                self._schedule_commit()
            elif isinstance(action, DeadLetter):
                self._dead.append(action)
                self._schedule_commit()
            elif isinstance(action, LoadBacklog):
                # on a later turn: reading a slice is no reason to make requests wait
                self.reactor.callLater(0, self._load_backlog, action)
            elif isinstance(action, Provision):
                self.provisioner.handle(action.ref, action.request)
            elif isinstance(action, ServePackage):
                self.packages.serve(action).addCallback(
                    lambda message, ref=action.ref: self.answer_request(ref, message))
            elif isinstance(action, ResetLink):
                log.warn("Resetting the MQTT connection: {reason}", reason=action.reason)
                self.link.reset()
            elif isinstance(action, Notify):
                self._queue_notification(action)
            elif isinstance(action, Log):
                self._log(action)
            elif isinstance(action, RenameDevice):
                self._registry_change("rename", action.old, action.new)
            elif isinstance(action, DeleteDevice):
                self._registry_change("delete", action.name)

    # -- the outbox: group commit once per reactor turn ------------------------------
    # (on the reactor thread: a writer thread was tried, and with CPython's GIL passing
    # back and forth for every row it made the p99 latency four times worse)

    def _schedule_commit(self) -> None:
        if self._commit_call is None:
            self._commit_call = self.reactor.callLater(0, self.commit)

    def commit(self) -> None:
        """Write this turn's outbox changes in one transaction: store every new uplink,
        then answer its device; remove what the broker acknowledged and set aside what
        the platform refused."""
        if self._uplinks:
            self._flush_uplinks()  # its stores go with this write
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_call = None
        if self.outbox is None:
            return
        stores, self._stores = self._stores, []
        deletes, self._deletes = self._deletes, []
        dead, self._dead = self._dead, []
        if not (stores or deletes or dead):
            return
        now = self.now()
        rows = []
        # (store ref, position of its first row): the rows of a StoreMany get consecutive
        # ids, and the core is told the first
        starts = []
        for store in stores:
            starts.append((store.ref, len(rows)))
            if isinstance(store, StoreMany):
                rows += [(device, device_type, topic, payload, now)
                         for device, device_type, topic, payload in store.rows]
            else:
                rows.append((store.device, store.device_type, store.topic, store.payload, now))
        try:
            ids = self.outbox.write(rows, deletes, [(d.id, d.reason) for d in dead], now)
            self.counters["commits"] += 1
        except sqlite3.Error as exc:
            # the removals are harmless to keep (at worst delivered again after a restart):
            # they go with the next write
            self._deletes[:0] = deletes
            self._dead[:0] = dead
            if stores:
                self.apply(self.core.on_store_failed([s.ref for s in stores], str(exc), now))
            else:
                log.error("Could not update the outbox: {error}", error=str(exc))
            return
        if stores:
            self.apply(self.core.on_stored([(ref, ids[start]) for ref, start in starts], now))

    def restore(self) -> None:
        """Tell the core what the outbox holds from before; it asks for it in slices."""
        assert self.outbox is not None
        count, size = self.outbox.stats()
        if count:
            log.info("Outbox holds {count} undelivered uplinks ({size} bytes) from before; "
                     "delivering them", count=count, size=size)
        self.apply(self.core.on_backlog(count, size, self.now()))

    def _load_backlog(self, action: LoadBacklog) -> None:
        if self.outbox is None:
            return
        try:
            entries = self.outbox.load_slice(action.after, action.rows, action.size)
        except (sqlite3.Error, StartupError) as exc:
            # the core asks for nothing more: the rest stays on disk for the next start
            log.error("Could not read the outbox {path} after entry {id}: {error}; its later "
                      "entries stay there (see docs/reliability.md)", path=self.outbox.path,
                      id=action.after, error=str(exc))
            return
        log.debug("Read {count} outbox entries after {id}", count=len(entries), id=action.after)
        self.apply(self.core.on_restored(entries, self.now(), more=bool(entries)))

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
        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.05, now=True).addErrback(lambda f: log.failure("Drain failed", failure=f))
        return done

    def _queue_notification(self, notify: Notify) -> None:
        # Sent on the next turn of the reactor, in order, so that a registration's
        # response (sent when txThings resumes) always goes before its first notification.
        self._notifications.append(notify)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush_notifications)

    def _flush_notifications(self) -> None:
        self._flush_call = None
        batch, self._notifications = self._notifications, []
        for notify in batch:
            if self.coap is None:
                continue
            self.coap.notify(notify.ref, notify.remote, notify.token, notify.confirmable,
                               notify.code, notify.payload, notify.observe, notify.block_size)
            log.debug("Notified {device} (observe {observe}, {kind})", device=notify.device,
                      observe=notify.observe, kind="CON" if notify.confirmable else "NON")

    def _log(self, entry: Log) -> None:
        if entry.error is not None:  # a bug the core contained: its traceback, once
            log.failure("{text}", failure=Failure(entry.error), level=LogLevel.error,
                        text=entry.text, device=entry.device)
            return
        emit = {"debug": log.debug, "info": log.info, "warn": log.warn,
                "error": log.error}.get(entry.level, log.info)
        emit("{text}", text=entry.text, device=entry.device)

    def _registry_change(self, kind: str, *names: str) -> None:
        if self.registry is None:
            return
        try:
            if kind == "rename":
                changed = self.registry.rename(names[0], names[1])
                if self.outbox is not None:
                    self.commit()  # uplinks being stored were renamed by the core: write them
                    self.outbox.rename(names[0], names[1], lambda topic, payload: gateway
                                       .rename_device(topic, payload, names[0], names[1]))
            else:
                changed = self.registry.mark_deleted(names[0])
        except RegistryError as exc:
            log.error("Platform asked to {kind} {device}, but: {error}", kind=kind,
                      device=names[0], error=str(exc))
            return
        log.info("Platform {kind}d device {device}{detail}", kind=kind, device=names[0],
                 detail=" to %s" % names[1] if kind == "rename" else "",
                 known=changed)

    def reconnect_device(self, name: str) -> None:
        self.apply(self.core.reconnect_device(name, self.now()))

    def answer_json(self, ref: int, code: int, body: bytes,
                    max_age: Optional[int] = None) -> None:
        self.answer_request(ref, coap_edge.make_response(
            code, body, codes.APPLICATION_JSON if body else None, max_age))

    def _reply(self, reply: Reply) -> None:
        # A device's bad request is its problem, and logging each one would let any
        # device flood the log: per-request answers are debug; states worth an operator's
        # attention (outbox full, platform refusals) arrive as Log actions from the core.
        if reply.code >= codes.BAD_REQUEST:
            self.counters["errors"] += 1
            pending = self.requests.get(reply.ref)
            remote = pending[1] if pending is not None else None
            log.debug("Answered {code} to {peer}: {reason}", code=codes.dotted(reply.code),
                      peer=_peer(remote) if remote else "device", reason=reply.reason)
        self.answer_request(reply.ref, coap_edge.make_response(
            reply.code, reply.payload, reply.content_format, reply.max_age, reply.size1,
            reply.observe), reply.authenticated)

    def answer_request(self, ref: int, message: Union[txcoap.Message, Answer],
                       authenticated: bool = False) -> None:
        """Send the answer to CoAP request ``ref`` (once); ``authenticated``: the request
        carried a valid access token (also known if the core looked it up in ``on_request``)."""
        pending = self.requests.pop(ref, None)
        if pending is None:
            return
        if isinstance(message, Answer):
            message.authenticated = message.authenticated or pending[2] or authenticated
        else:  # large answers to a valid token need no amplification limit
            message = Answer(message, pending[2] or authenticated)
        self._release(pending)
        pending[0].callback(message)

    def _release(self, pending: List[Any]) -> None:
        remote = pending[1]
        for counts, key in ((self.pending_by_peer, remote), (self.pending_by_address, remote[0])):
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]


def _peer(remote: Any) -> str:
    address, port = remote
    return "[%s]:%d" % (address, port) if ":" in str(address) else "%s:%d" % (address, port)


def _cannot_listen(what: str, protocol: str, exc: CannotListenError, key: str,
                   env: str) -> str:
    error = exc.socketError
    reason = getattr(error, "strerror", None) or str(error)
    return ("cannot listen for %s on %s %s port %s: %s; stop the program that uses it "
            "(another bridge?) or choose another port with %s (%s)"
            % (what, protocol, exc.interface or "*", exc.port, reason, key, env))


class _MqttService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge

    def startService(self) -> None:
        Service.startService(self)
        self.bridge.link.start()

    def stopService(self) -> defer.Deferred:
        Service.stopService(self)
        d = self.bridge.drain(timeout=2.0)
        d.addCallback(lambda _: self.bridge.link.stop())
        return d


class _TickService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.loop = LoopingCall(bridge.tick)
        self.loop.clock = bridge.reactor

    def startService(self) -> None:
        Service.startService(self)
        self.loop.start(TICK_SECONDS, now=False).addErrback(
            lambda f: log.failure("Core timer stopped", failure=f))

    def stopService(self) -> None:
        Service.stopService(self)
        if self.loop.running:
            self.loop.stop()


class _CoapService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.port: Any = None
        self.protocol: Optional[coap_edge.BridgeCoap] = None

    def startService(self) -> None:
        cfg = self.bridge.config.coap
        self.protocol = coap_edge.create_protocol(
            self.bridge.handle_coap, self.bridge.reactor, cfg.empty_ack_delay,
            cfg.exchange_lifetime, cfg.max_body, self.bridge.rng, cfg.ack_timeout,
            cfg.max_retransmit)
        self.protocol.on_result = self.bridge.notified
        self.bridge.coap = self.protocol
        try:
            self.port = coap_edge.listen(self.bridge.reactor, self.protocol, cfg.bind_port,
                                         cfg.bind_address)
        except CannotListenError as exc:
            raise StartupError(_cannot_listen("CoAP", "UDP", exc, "coap.bind_port",
                                              "COAP_BIND_PORT"))
        Service.startService(self)
        host = self.port.getHost()
        log.info("CoAP listening on {host}:{port}", host=host.host, port=host.port)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            port.stopReading()  # no new requests; those already stored are answered now
            self.bridge.commit()
            return port.stopListening()
        return None


class _MetricsService(Service):
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.port: Any = None

    def startService(self) -> None:
        from .edge.metrics import MetricsSite
        cfg = self.bridge.config.metrics
        Service.startService(self)
        if cfg.port:
            site = MetricsSite(self.bridge.metrics)
            try:
                self.port = self.bridge.reactor.listenTCP(cfg.port, site,
                                                          interface=cfg.bind_address)
            except CannotListenError as exc:
                raise StartupError(_cannot_listen("metrics", "TCP", exc, "metrics.port",
                                                  "METRICS_PORT, 0: off"))
            log.info("Metrics on http://{host}:{port}/metrics", host=cfg.bind_address,
                     port=self.port.getHost().port)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class BridgeService(MultiService):
    """MQTT first, then the core's timer, then CoAP; stopped in reverse.

    A start-up problem (a port in use, DATA_DIR not writable, a damaged file) is a
    ``StartupError``: the files opened so far are closed and ``refuse`` gets its one
    line (``tap.py`` prints it and exits 2); without ``refuse`` it is raised."""

    def __init__(self, config: Config, reactor: Any, rng: Optional[random.Random] = None,
                 refuse: Optional[Callable[[str], None]] = None):
        MultiService.__init__(self)
        self.config = config
        self.refuse = refuse
        self.bridge = Bridge(config, reactor, rng)
        self.coap = _CoapService(self.bridge)
        _MqttService(self.bridge).setServiceParent(self)
        _TickService(self.bridge).setServiceParent(self)
        _MetricsService(self.bridge).setServiceParent(self)
        self.coap.setServiceParent(self)

    def startService(self) -> None:
        try:
            self._start()
        except StartupError as exc:
            self._close_files()
            if self.refuse is None:
                raise
            self.refuse(str(exc))

    def _start(self) -> None:
        self.bridge.registry = Registry(self.config.registry_path)
        log.info("Device registry {path}: {count} devices", path=self.config.registry_path,
                 count=len(self.bridge.registry.entries()))
        self.bridge.outbox = Outbox(self.config.outbox_path, self.config.outbox.synchronous)
        try:
            self.bridge.packages.start()
        except OSError as exc:
            raise StartupError("cannot use the package cache %s: %s; it must be a directory "
                               "this user can write" % (exc.filename or self.bridge.packages
                                                        .directory, exc.strerror or exc))
        self.bridge.restore()
        MultiService.startService(self)

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(MultiService.stopService, self)

        def close(result: Any) -> Any:
            if self.bridge.outbox is not None:
                self.bridge.commit()
                count, size = self.bridge.outbox.stats()
                if count:
                    log.info("{count} uplinks wait in the outbox for the next start", count=count)
            self._close_files()
            log.info("Stopped")
            return result
        return d.addBoth(close)

    def _close_files(self) -> None:
        if self.bridge.outbox is not None:
            self.bridge.outbox.close()
            self.bridge.outbox = None
        if self.bridge.registry is not None:
            self.bridge.registry.close()
            self.bridge.registry = None
