"""The glue's notification queue: sent on the next reactor turn, and taken back when the
core withdraws one (its PSM device fell asleep)."""

from twisted.internet.task import Clock

from bridge.core.actions import Notify, Withdraw
from bridge.glue.notifications import Notifications


class Transport:
    def __init__(self):
        self.sent, self.withdrawn = [], []

    def notify(self, ref, *args):
        self.sent.append(ref)

    def withdraw(self, ref):
        self.withdrawn.append(ref)


def notify(ref):
    return Notify(ref, ("10.0.0.1", 5683), b"\x01", 69, b"{}", ref)


def test_a_withdrawn_notification_still_queued_is_never_sent():
    clock, transport = Clock(), Transport()
    queue = Notifications(clock)
    queue.transport = transport
    queue.queue(notify(1))
    queue.queue(notify(2))
    queue.withdraw(Withdraw(1))
    clock.advance(0)
    assert (transport.sent, transport.withdrawn) == ([2], [])


def test_a_withdrawn_notification_already_sent_stops_in_the_transport():
    clock, transport = Clock(), Transport()
    queue = Notifications(clock)
    queue.transport = transport
    queue.queue(notify(3))
    clock.advance(0)
    queue.withdraw(Withdraw(3))
    assert (transport.sent, transport.withdrawn) == ([3], [3])
