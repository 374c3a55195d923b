"""A short-lived MQTT session: connect as someone, do one exchange, close.

The OTA fetch (``ota.py``, the device's token as username) and upstream
provisioning (``provision.py``, username ``provision``) each open one per
request. ``ShortSession`` owns what they share: the session's own client id,
one connection attempt (no retries), the deadline, one result, and closing the
link whatever the outcome; a subclass says what to send once connected
(``link_up``) and which messages end it (``message``). ``ShortSessions``
holds those open, so that stopping the service ends them and their timers.
"""

from __future__ import annotations

import dataclasses
import secrets
import string
from typing import Any, List, Optional, Set

from twisted.internet import defer

from ..settings import MqttConfig
from ..logs import logger
from .mqtt import MqttLink

log = logger("mqtt")


def random_name(length: int = 20) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class SessionFailed(Exception):
    """The session ended without a result: ``reason`` says why (for logs and answers)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ShortSession:
    """One short-lived session (a LinkListener). ``start()`` returns a Deferred that fires
    with what ``succeed`` is given, or fails with ``SessionFailed``."""

    def __init__(self, reactor: Any, config: MqttConfig, username: str, purpose: str,
                 subscriptions: List[str], timeout: float, timeout_reason: str):
        self.reactor = reactor
        self.purpose = purpose  # e.g. "ota": in the client id and the log
        self.timeout = timeout
        self.timeout_reason = timeout_reason
        mqtt = dataclasses.replace(config, username=username, password="",
                                   client_id="coapbridge-%s-%s" % (purpose, random_name(8)))
        self.link = MqttLink(reactor, mqtt, self, subscriptions, retry=False)
        self.done: defer.Deferred = defer.Deferred()
        self._timer: Any = None
        self._sessions: Optional["ShortSessions"] = None

    def start(self, sessions: Optional["ShortSessions"] = None) -> defer.Deferred:
        if sessions is not None:
            sessions.add(self)
            self._sessions = sessions
        self._timer = self.reactor.callLater(self.timeout, self.fail, self.timeout_reason)
        self.link.start()
        return self.done

    def publish(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload)

    def succeed(self, result: Any) -> None:
        if self._end():
            self.done.callback(result)

    def fail(self, reason: str) -> None:
        if self._end():
            self.done.errback(SessionFailed(reason))

    def _end(self) -> bool:
        """Close the session once; False if it had ended already."""
        if self.done.called:
            return False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._sessions is not None:
            self._sessions.discard(self)
        self.closed()
        stopped = self.link.stop()
        stopped.addErrback(lambda f: log.failure("Closing a short {purpose} session",
                                                 failure=f, purpose=self.purpose))
        return True

    # -- for subclasses ------------------------------------------------------------------

    def closed(self) -> None:
        """The session is ending (before its result is given): release what it holds."""

    def link_up(self) -> None:
        pass

    def link_down(self, reason: str) -> None:
        self.fail("connection failed: %s" % reason)

    def published(self, mid: int, reason_code: int) -> None:
        pass

    def message(self, topic: str, payload: bytes) -> None:
        pass


class ShortSessions:
    """The short sessions open now; ``stop()`` ends each (with ``SessionFailed``)."""

    def __init__(self) -> None:
        self._open: Set[ShortSession] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, session: ShortSession) -> None:
        self._open.add(session)

    def discard(self, session: ShortSession) -> None:
        self._open.discard(session)

    def stop(self) -> None:
        for session in list(self._open):
            session.fail("the bridge is stopping")
