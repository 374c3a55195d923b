"""The gateway's MQTT connection: paho-mqtt driven by the Twisted reactor.

paho runs through its external-loop API only: the reactor watches the socket
(``loop_read`` on readable, ``loop_write`` while paho has output) and a
LoopingCall runs ``loop_misc`` for keep-alive. No paho thread exists.

paho's own ``connect()`` blocks on the TCP connect and the TLS handshake, so
``Connector`` (mqtt_connect.py) does both without blocking, on the reactor, and
``MqttLink`` hands the ready socket to a fresh paho client (``_ReadyClient``). A
fresh client per connection also means nothing from a dead connection is re-sent
behind the core's back. ``Reconnects`` (mqtt_connect.py) picks the backoff and
names a likely client id clash.

A message that cannot be handled is skipped and logged, and the link keeps
reading: an exception must never reach paho, which would keep the half-read
packet and hand it to the callback again on every later read.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Callable, List, Optional, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..settings import MqttConfig
from ..core.limits import RateLimiter
from ..logs import logger
from ..registry import mask
from .mqtt_connect import Connector, Reconnects, SocketWatch
from .mqtt_inbound import decode_publish

log = logger("mqtt")

FAILURE_LOG_INTERVAL = 60.0  # one traceback per topic this often
FORCE_CLOSE_AFTER = 2.0  # s a clean disconnect may take when stopping
READ_PACKETS = 100  # MQTT packets read per reactor iteration at most (then the others' turn)


class LinkListener(Protocol):
    def link_up(self) -> None: ...
    def link_down(self, reason: str) -> None: ...
    def published(self, mid: int, reason_code: int) -> None: ...
    def message(self, topic: str, payload: bytes) -> None: ...


class _ReadyClient(paho.Client):
    """A paho client that uses a socket already connected (and TLS-handshaken) by us."""

    ready_socket: Any = None
    # topic (bytes), payload of each QoS 0 or 1 PUBLISH; None: paho's own path (on_message)
    deliver: Optional[Callable[[bytes, bytes], None]] = None

    def _create_socket(self) -> Any:
        sock, self.ready_socket = self.ready_socket, None
        if sock is None:
            raise OSError(errno.ENOTCONN, "no connected socket prepared")
        return sock

    def read_packets(self, limit: int) -> int:
        """Read what the socket holds, up to ``limit`` packets or as many as there are
        messages in flight if more. paho's ``loop_read`` takes a ``max_packets`` but reads
        only as many packets as it has messages in flight (at least one), so with nothing
        in flight one packet per call: a reactor iteration, and a turn of the
        notifications' flush, per downstream message. The loop is ``loop_read``'s own,
        over the same (private, major-2) ``_packet_read``."""
        limit = max(limit, len(self._out_messages) + len(self._in_messages))
        for _ in range(limit):
            if self._sock is None:
                return paho.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == paho.MQTT_ERR_AGAIN:
                break
        return paho.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> Any:
        """An inbound PUBLISH, decoded by mqtt_inbound.py (paho's decoder builds objects
        the bridge never reads, see there) and handed to ``deliver``; then the PUBACK, as
        paho sends it. QoS 2 (the bridge subscribes at 1, so a broker sends none) stays
        paho's."""
        packet = self._in_packet
        header = packet["command"]
        deliver = self.deliver
        if header & 0x04 or deliver is None:  # QoS 2, or 3 (malformed)
            return super()._handle_publish()
        topic, mid, payload = decode_publish(header, packet["packet"],
                                             self._protocol == paho.MQTTv5)
        deliver(topic, payload)
        if mid and not self._manual_ack:
            return self._send_puback(mid)
        return paho.MQTT_ERR_SUCCESS


class MqttLink:
    """One gateway connection to the broker, kept up for as long as the service runs."""

    def __init__(self, reactor: Any, config: MqttConfig, listener: LinkListener,
                 subscriptions: List[str], rng: Optional[random.Random] = None,
                 retry: bool = True):
        self.reactor = reactor
        self.config = config
        self.listener = listener
        self.subscriptions = subscriptions
        self.retry = retry  # False: one attempt, for short-lived sessions
        self.rng = rng or random.Random()
        self.client: Optional[_ReadyClient] = None
        self.connected = False
        self._running = False
        self.connector = Connector(reactor, config, self._hand_over, self._connect_failed)
        self.reconnects = Reconnects(reactor, config, self.rng)
        self._watch = SocketWatch(reactor)  # the paho client's socket
        self._retry: Any = None
        self._ticker = LoopingCall(self._misc)
        self._ticker.clock = reactor
        self._stopped: Optional[defer.Deferred] = None
        self._flush_call: Any = None
        self.failed_messages = 0  # messages whose handler raised
        self._failure_logs = RateLimiter(1 / FAILURE_LOG_INTERVAL, 1, max_keys=1000)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._ticker.start(1.0, now=False).addErrback(
            lambda f: log.failure("MQTT keep-alive timer stopped", failure=f))
        self._connect()

    def stop(self) -> defer.Deferred:
        """Disconnect cleanly; the Deferred fires when the socket is closed."""
        self._running = False
        if self._ticker.running:
            self._ticker.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.connector.abandon()
        if self.client is None:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        # Not now: stop() may run inside a paho callback, and paho holds a non-reentrant
        # lock there that its disconnect callback needs.
        self.reactor.callLater(0, self._disconnect)
        force = self.reactor.callLater(FORCE_CLOSE_AFTER, self._force_close)

        def closed(result: Any) -> Any:
            if force.active():  # closed in time: no timer outlives the link
                force.cancel()
            return result
        return self._stopped.addBoth(closed)

    def _disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self._flush()

    def reset(self) -> None:
        """Drop the connection now; the usual reconnect follows."""
        if self.client is not None and self.connected:
            self.client._sock_close()
            self._on_disconnect(self.client, None, None, "reset by the bridge", None)

    def publish(self, topic: str, payload: bytes) -> Optional[int]:
        """Publish at QoS 1; returns paho's mid, or None when not connected."""
        if self.client is None or not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            log.warn("Publish on {topic} refused by the client: {error}", topic=topic,
                     error=paho.error_string(info.rc))
            return None
        self._schedule_flush()
        return info.mid

    def _schedule_flush(self) -> None:
        if self._flush_call is None:  # one write for all publishes of this reactor turn
            self._flush_call = self.reactor.callLater(0, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_call = None
        self._flush()

    # -- connecting ------------------------------------------------------------------

    def _connect(self) -> None:
        if self._running:
            self.connector.start()

    def _hand_over(self, sock: Any) -> None:
        """The socket is connected: let a fresh paho client speak MQTT on it."""
        cfg = self.config
        protocol = paho.MQTTv5 if cfg.mqtt5 else paho.MQTTv311
        client = _ReadyClient(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                              protocol=protocol,
                              clean_session=None if cfg.mqtt5 else True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        # The core bounds what is in flight (mqtt.max_inflight); 0 here keeps paho from
        # scanning its whole queue on every PUBACK.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.deliver = self._deliver
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if cfg.mqtt5:
            client.connect_async(cfg.host, cfg.port, cfg.keepalive, clean_start=True)
        else:
            client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        client.ready_socket = sock
        self.client = client
        rc = client.reconnect()
        if rc != paho.MQTT_ERR_SUCCESS:
            self._connect_failed("sending CONNECT failed: %s" % paho.error_string(rc))

    # -- paho callbacks (all on the reactor thread) ----------------------------

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._watch.watch(sock, self._read, self._write, self._lost)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._watch.stop()
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._watch.want_write(True)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._watch.want_write(False)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the gateway connection: {reason} "
                      "(username {username})", reason=str(reason_code),
                      username=mask(self.config.username))
            return  # paho closes the socket; _on_disconnect schedules the retry
        self.connector.connected()
        self.connected = True
        self.reconnects.up()
        log.info("Connected to MQTT broker {host}:{port}", host=self.config.host,
                 port=self.config.port)
        for topic in self.subscriptions:
            if self.config.mqtt5:
                client.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
            else:
                client.subscribe(topic, qos=1)
        self._tell("link_up", self.listener.link_up)
        # Not now: a write that finds the connection closed makes paho take its callback
        # lock again, which it holds while it calls us (a deadlock if the broker drops us
        # right after CONNACK, as it does when another client takes our client id).
        self._schedule_flush()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if client is not self.client:
            return
        was_connected, self.connected = self.connected, False
        self.client = None
        self._watch.stop()
        if self._stopped is not None:
            if not self._stopped.called:
                self._stopped.callback(None)
            if was_connected:
                self._tell("link_down", self.listener.link_down, "stopped")
            return
        reason = str(reason_code)
        if was_connected:
            if self.retry:
                self.reconnects.lost(reason_code, flags)
                self._tell("link_down", self.listener.link_down, reason)
            self._schedule_retry()
        else:
            self._connect_failed("connection closed during CONNECT: %s" % reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        value = getattr(reason_code, "value", 0)
        self._tell("published", self.listener.published, mid, value)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """A message paho decoded (QoS 2): as ``_deliver``."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho delivers it; MQTT says it cannot happen
            self._message_failed("(not UTF-8)", None)
            return
        self._handle(topic, message.payload)

    def _deliver(self, name: bytes, payload: bytes) -> None:
        """A message from the broker (QoS 0 or 1, decoded by mqtt_inbound.py)."""
        try:
            topic = name.decode("utf-8")
        except UnicodeDecodeError:  # MQTT says it cannot happen
            self._message_failed("(not UTF-8)", None)
            return
        self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker: handled, or logged and skipped; never raises."""
        try:
            self.listener.message(topic, payload)
        except Exception:
            self._message_failed(topic, Failure())

    def _message_failed(self, topic: str, failure: Optional[Failure]) -> None:
        self.failed_messages += 1
        # v1/devices/me/rpc/request/7 and /8 share one limit
        if self._failure_logs.allow(topic.rstrip("0123456789"), self.reactor.seconds()) is None:
            if failure is None:
                log.warn("Skipped an MQTT message on a topic name that is not UTF-8")
            else:
                log.failure("Handling an MQTT message on {topic} failed; it is skipped (more on "
                            "this topic within {interval:.0f} s are logged without traceback)",
                            failure=failure, topic=topic, interval=FAILURE_LOG_INTERVAL)
        elif failure is not None:
            log.warn("Handling an MQTT message on {topic} failed; it is skipped: {error}",
                     topic=topic, error=failure.getErrorMessage())

    def _tell(self, what: str, call: Callable[..., None], *args: Any) -> None:
        """A listener call from a paho callback: a bug there must not reach paho."""
        try:
            call(*args)
        except Exception:
            log.failure("The bridge failed to handle MQTT event {event}", event=what)

    # -- reactor readiness -----------------------------------------------------

    def _read(self) -> None:
        client = self.client
        if client is not None:
            try:
                client.read_packets(READ_PACKETS)
            except Exception:
                # paho's state is unknown now (a half-read packet): start a fresh connection
                log.failure("Reading from the MQTT broker failed; resetting the connection")
                self.reset()
                return
        self._flush()

    def _write(self) -> None:
        client = self.client
        if client is not None:
            client.loop_write()

    def _flush(self) -> None:
        client = self.client
        if client is not None and client.want_write():
            client.loop_write()

    def _lost(self, reason: Failure) -> None:
        """The reactor stopped watching the socket (hang-up): paho reads the end of it."""
        self._watch.removed()
        self._read()
        if self.client is not None and self.connected and self._running:
            # still open to paho, but nothing reads it any more: do not pretend it is up
            self.reset()

    def _misc(self) -> None:
        if self.client is not None:
            self.client.loop_misc()
            self._flush()

    # -- failures and retries --------------------------------------------------

    def _connect_failed(self, reason: str) -> None:
        self.connector.abandon()
        if self.client is not None:
            client, self.client = self.client, None
            self._watch.stop()
            client._sock_close()
        if not self._running:
            return
        log.warn("Cannot connect to MQTT broker {host}:{port}: {reason}",
                 host=self.config.host, port=self.config.port, reason=reason)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._running:
            return
        if not self.retry:
            self._running = False
            if self._ticker.running:
                self._ticker.stop()
            self.listener.link_down("connection failed or closed")
            return
        delay = self.reconnects.next_delay()
        log.info("Reconnecting to MQTT in {delay:.1f} s", delay=delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _force_close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            self._watch.stop()
            client._sock_close()
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)
