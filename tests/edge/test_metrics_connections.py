"""The metrics port's connections (#27.9): a new connection past metrics.max_connections
closes the longest-open idle one, or is refused when all are busy; idle ones time out."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bridge.edge.metrics import MetricsSite


def site(clock, limit=3, idle=10.0):
    metrics = MetricsSite(CollectorRegistry(), idle_timeout=idle, max_connections=limit)
    metrics.reactor = clock  # the site's own timers (and the channels' timeouts)
    return metrics


def connect(metrics, n):
    channel = metrics.buildProtocol(IPv4Address("TCP", "10.0.0.%d" % n, 40000 + n))
    if channel is None:
        return None, None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.%d" % n, 40000 + n))
    channel.makeConnection(transport)
    return channel, transport


def test_past_the_limit_the_longest_open_idle_connection_makes_room():
    clock = Clock()
    metrics = site(clock)
    channels = [connect(metrics, n) for n in range(3)]
    channels[0][0].dataReceived(b"GET /metrics HTTP/1.1\r\n")  # busy: a request has begun
    newcomer, _ = connect(metrics, 9)
    assert newcomer is not None and metrics.evicted == 1
    assert channels[1][1].disconnecting and not channels[0][1].disconnecting
    assert len(metrics.channels) == 3 and newcomer in metrics.channels


def test_when_every_connection_is_busy_a_new_one_is_refused():
    clock = Clock()
    metrics = site(clock, limit=2)
    for n in range(2):
        channel, _ = connect(metrics, n)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\n")
    assert connect(metrics, 9) == (None, None)
    assert metrics.refused == 1 and len(metrics.channels) == 2


def test_an_idle_connection_is_closed_after_the_idle_timeout_and_forgotten():
    clock = Clock()
    metrics = site(clock, idle=10.0)
    channel, transport = connect(metrics, 1)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    channel.connectionLost(None)
    assert metrics.channels == {}
