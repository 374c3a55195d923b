"""The connection attempt's failures, each said as what it is."""

from __future__ import annotations

import errno
import socket

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bridge import settings as config_module
from bridge import startup_checks
from bridge.edge.mqtt_connect import Connector


def test_a_socket_that_cannot_be_made_is_not_reported_as_a_name_that_does_not_resolve(
        monkeypatch):
    def no_socket(*args):
        raise OSError(errno.EMFILE, "Too many open files")
    mqtt = startup_checks.load_text("mqtt: {host: 127.0.0.1, port: 1883}", {}).mqtt
    reasons, events = [], []
    connector = Connector(Clock(), mqtt, lambda sock: None, reasons.append)
    monkeypatch.setattr(socket, "socket", no_socket)
    globalLogPublisher.addObserver(events.append)
    try:
        connector.start()  # an IP literal: resolved at once, then the socket fails
    finally:
        globalLogPublisher.removeObserver(events.append)
        connector.abandon()
    assert reasons == ["cannot open a socket: [Errno 24] Too many open files"]
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(OSError)
    failure.cleanFailure()
