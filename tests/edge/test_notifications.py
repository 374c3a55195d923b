"""The glue's notification queue: sent on the next reactor turn, and taken back when the
core withdraws one (its PSM device fell asleep): by the transport of its peer's type."""

from twisted.internet.task import Clock

from bridge.core.actions import Notify, Withdraw
from bridge.edge.stream import Hub
from bridge.glue.notifications import Notifications
from bridge.glue.transports import Transports
from bridge.settings import ReliableConfig


class Transport:
    def __init__(self):
        self.sent, self.withdrawn = [], []

    def notify(self, ref, *args):
        self.sent.append(ref)

    def withdraw(self, ref, peer):
        self.withdrawn.append((ref, peer))


PEER = ("10.0.0.1", 5683)


class SecurePeer(str):
    """A peer of another type (as a DTLS session's ``DtlsPeer`` is)."""


class StreamPeer:
    """A reliable connection's peer: the hub writes its notifications on its connection
    (edge.stream)."""

    def __init__(self):
        self.sent = []

    def notify(self, ref, *args):
        self.sent.append(ref)


def notify(ref):
    return Notify(ref, PEER, b"\x01", 69, b"{}", ref)


def test_a_withdrawn_notification_still_queued_is_never_sent_and_its_fate_is_withdrawn():
    clock, transport = Clock(), Transport()
    outcomes = []
    transports = Transports()
    queue = Notifications(clock, transports, lambda ref, outcome: outcomes.append((ref, outcome)))
    transports.join(tuple, transport)
    queue.queue(notify(1))
    queue.queue(notify(2))
    queue.withdraw(Withdraw(1, PEER))
    assert outcomes == []  # on the turn it would have gone, not inside the core's call
    clock.advance(0)
    assert (transport.sent, transport.withdrawn) == ([2], [])
    assert outcomes == [(1, "withdrawn")]


def test_a_withdrawn_notification_already_sent_stops_in_the_transport_of_its_peer():
    clock, plain, secure = Clock(), Transport(), Transport()
    transports = Transports()
    queue = Notifications(clock, transports, lambda ref, outcome: None)
    transports.join(tuple, plain)
    transports.join(SecurePeer, secure)
    queue.queue(notify(3))
    clock.advance(0)
    queue.withdraw(Withdraw(3, PEER))
    queue.withdraw(Withdraw(4, SecurePeer("k")))
    assert (plain.sent, plain.withdrawn) == ([3], [(3, PEER)])
    assert secure.withdrawn == [(4, SecurePeer("k"))]


def test_a_notification_to_a_reliable_connection_has_nothing_to_withdraw():
    clock, plain = Clock(), Transport()
    outcomes = []
    transports = Transports()
    queue = Notifications(clock, transports, lambda ref, outcome: outcomes.append((ref, outcome)))
    transports.join(tuple, plain)
    transports.join(StreamPeer, Hub(ReliableConfig(), lambda incoming: None, clock, 1024))
    connection = StreamPeer()
    queue.queue(Notify(5, connection, b"\x01", 69, b"{}", 5))
    clock.advance(0)
    queue.withdraw(Withdraw(5, connection))
    clock.advance(0)
    assert connection.sent == [5] and plain.withdrawn == [] and outcomes == []
