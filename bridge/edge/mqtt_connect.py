"""Connecting the gateway's MQTT link without blocking, and deciding when to try again.

paho's own ``connect()`` blocks on the TCP connect and the TLS handshake, so
``Connector`` does both on the reactor (name resolution in the reactor's thread
pool unless the host is an IP literal) and hands the ready socket over; paho has
no non-blocking connect of its own to use instead. The attempt's deadline
(``mqtt.connect_timeout``) runs on until the CONNACK, which the link reports with
``Connector.connected``.

``Reconnects`` decides the delay before the next attempt: exponential backoff with
jitter (``bridge.core.backoff``) between ``reconnect_min_delay`` and
``reconnect_max_delay``, from the injected random source and clock. A connection
counts as a success (the backoff starts again from the minimum) only once it has
stayed up ``STABLE_SECONDS``;
connections lost sooner, several times in a row, are reported as what they usually
are: another client with the same client id (or, on ThingsBoard, the same gateway
token).

Not Twisted's ``ClientService``: it reconnects a Twisted protocol over an endpoint,
while here paho owns the socket (and its MQTT state) once it is connected, and a new
paho client per connection is what guarantees nothing from a dead connection is sent
again (docs/architecture.md, "paho on the reactor").

``SocketWatch`` is the reactor's readiness for one socket, used by both.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
import ssl
from typing import Any, Callable, List, Optional

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.backoff import Backoff
from ..settings import MqttConfig
from ..logs import logger

log = logger("mqtt")

STABLE_SECONDS = 10.0  # a connection up this long resets the backoff
SHORT_SESSIONS_HINT = 3  # lost this many times in a row sooner: name the likely cause
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: a client with our id connected


@implementer(IReadWriteDescriptor)
class _Watcher:
    """Reactor readiness for one socket, forwarded to callbacks."""

    def __init__(self, sock: Any, on_read: Callable[[], None], on_write: Callable[[], None],
                 on_lost: Callable[[Failure], None]):
        self.sock = sock
        self.on_read = on_read
        self.on_write = on_write
        self.on_lost = on_lost

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.on_read()

    def doWrite(self) -> None:
        self.on_write()

    def connectionLost(self, reason: Failure) -> None:
        self.on_lost(reason)

    def logPrefix(self) -> str:
        return "mqtt"


class SocketWatch:
    """The reactor watching at most one socket, for reading and (on demand) writing."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self._watcher: Optional[_Watcher] = None
        self._reading = self._writing = False

    @property
    def active(self) -> bool:
        return self._watcher is not None

    def watch(self, sock: Any, on_read: Callable[[], None], on_write: Callable[[], None],
              on_lost: Callable[[Failure], None], read: bool = True) -> None:
        """Watch ``sock`` (instead of any socket watched so far) for reading, or writing."""
        self.stop()
        self._watcher = _Watcher(sock, on_read, on_write, on_lost)
        if read:
            self.reactor.addReader(self._watcher)
            self._reading = True
        else:
            self.reactor.addWriter(self._watcher)
            self._writing = True

    def want_write(self, wanted: bool) -> None:
        if self._watcher is None or wanted == self._writing:
            return
        if wanted:
            self.reactor.addWriter(self._watcher)
        else:
            self.reactor.removeWriter(self._watcher)
        self._writing = wanted

    def removed(self) -> None:
        """The reactor has stopped watching by itself (it reported the connection lost)."""
        self._reading = self._writing = False

    def stop(self) -> None:
        if self._watcher is not None:
            if self._reading:
                self.reactor.removeReader(self._watcher)
            if self._writing:
                self.reactor.removeWriter(self._watcher)
        self._reading = self._writing = False
        self._watcher = None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Connector:
    """One connection attempt at a time: resolve, TCP connect, TLS handshake, never blocking.

    ``on_ready(sock)`` gets the connected socket (it owns it from then on); ``on_failed``
    gets a one-line reason. Either way the attempt's deadline runs on until
    ``connected`` (the CONNACK) or ``abandon``.
    """

    def __init__(self, reactor: Any, config: MqttConfig, on_ready: Callable[[Any], None],
                 on_failed: Callable[[str], None]):
        self.reactor = reactor
        self.config = config
        self.on_ready = on_ready
        self.on_failed = on_failed
        self._deadline: Any = None
        self._sock: Any = None
        self._watch = SocketWatch(reactor)

    def start(self) -> None:
        cfg = self.config
        log.info("Connecting to MQTT broker {host}:{port} (MQTT {protocol}, TLS {tls}, "
                 "client id {client_id})", host=cfg.host, port=cfg.port,
                 protocol=cfg.protocol, tls=cfg.tls.enabled, client_id=cfg.client_id)
        self._deadline = self.reactor.callLater(cfg.connect_timeout, self.on_failed,
                                                "timed out after %ss" % cfg.connect_timeout)
        if _is_ip_literal(cfg.host):
            d = defer.maybeDeferred(socket.getaddrinfo, cfg.host, cfg.port, 0, socket.SOCK_STREAM)
        else:
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                          socket.getaddrinfo, cfg.host, cfg.port, 0,
                                          socket.SOCK_STREAM)
        d.addCallbacks(self._resolved, lambda f: self.on_failed(
            "cannot resolve %s: %s" % (cfg.host, f.getErrorMessage())))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Any) -> None:
        """Making the socket failed after the name resolved (EMFILE, say, or a bug): said
        as what it is, with its traceback, and the attempt fails (the backoff goes on)."""
        log.failure("Cannot open a connection to the MQTT broker {host}:{port}", failure,
                    host=self.config.host, port=self.config.port)
        self.on_failed("cannot open a socket: %s" % failure.getErrorMessage())

    def connected(self) -> None:
        """The broker accepted the connection: the attempt is over."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def abandon(self) -> None:
        """Give up the attempt: its deadline and the socket not handed over yet."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._sock is not None:
            self._watch.stop()
            self._sock.close()
            self._sock = None

    def _resolved(self, infos: List[Any]) -> None:
        if self._deadline is None or not self._deadline.active():
            return
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        self._sock = sock
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.on_failed(errno.errorcode.get(err, str(err)))
            return
        self._once(self._tcp_ready, write=True)

    def _tcp_ready(self) -> None:
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.on_failed("%s (%s)" % (errno.errorcode.get(err, str(err)),
                                        "connection refused" if err == errno.ECONNREFUSED
                                        else "TCP connect failed"))
            return
        if self.config.tls.enabled:
            try:
                self._sock = self._tls_context().wrap_socket(
                    self._sock, server_hostname=self.config.host,
                    do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                self.on_failed("TLS setup failed: %s" % exc)
                return
            self._handshake()
        else:
            self._hand_over()

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        context.check_hostname = tls.verify_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
        return context

    def _handshake(self) -> None:
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            self._once(self._handshake, write=False)
            return
        except ssl.SSLWantWriteError:
            self._once(self._handshake, write=True)
            return
        except (ssl.SSLError, OSError) as exc:
            self.on_failed("TLS handshake failed: %s" % exc)
            return
        self._hand_over()

    def _hand_over(self) -> None:
        sock, self._sock = self._sock, None
        self.on_ready(sock)

    def _once(self, callback: Callable[[], None], write: bool) -> None:
        """Call ``callback`` once when the socket is readable (or writable)."""
        def fire() -> None:
            self._watch.stop()
            callback()

        # The reactor may report a failed connect (epoll: hang-up, no read or write
        # event) only by connectionLost: the callback then finds the error on the socket.
        self._watch.watch(self._sock, fire, fire, lambda reason: fire(), read=not write)


class Reconnects:
    """The delay before the next attempt, and what a lost connection probably means."""

    def __init__(self, clock: Any, config: MqttConfig, rng: random.Random):
        self.clock = clock
        self.config = config
        # jittered, from the shortest delay again once a connection stays up
        self.backoff = Backoff(config.reconnect_min_delay, config.reconnect_max_delay, rng)
        self.short_sessions = 0  # connections in a row lost within STABLE_SECONDS
        self._connected_at = 0.0

    def up(self) -> None:
        self._connected_at = self.clock.seconds()

    def next_delay(self) -> float:
        return self.backoff.next()

    def lost(self, reason_code: Any, flags: Any) -> None:
        """Say why the connection was lost, naming a client id clash when it looks like one."""
        up = self.clock.seconds() - self._connected_at
        if up >= STABLE_SECONDS:
            self.short_sessions = 0
            self.backoff.reset()  # it worked: reconnect from the shortest delay
        else:
            self.short_sessions += 1
        client_id = self.config.client_id
        from_broker = getattr(flags, "is_disconnect_packet_from_server", False)
        if from_broker and getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            log.warn("Lost the MQTT connection: the broker says another client connected with "
                     "the same client id {client_id} (session taken over); give each bridge "
                     "its own MQTT_CLIENT_ID or DATA_DIR (on ThingsBoard, which does the same "
                     "for one gateway token whatever the client id, its own gateway device)",
                     client_id=client_id)
        elif self.short_sessions >= SHORT_SESSIONS_HINT:
            log.warn("Lost the MQTT connection: {reason}; {count:plural:connection} in a row lost "
                     "within {seconds:.0f} s of being accepted: another client with the same "
                     "client id {client_id} (or, on ThingsBoard, the same gateway token)?",
                     reason=str(reason_code), count=self.short_sessions,
                     seconds=STABLE_SECONDS, client_id=client_id)
        else:
            log.warn("Lost the MQTT connection: {reason}", reason=str(reason_code))
