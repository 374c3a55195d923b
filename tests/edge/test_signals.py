"""bridge.signals: the first SIGTERM/SIGINT stops the bridge, a later one is only logged."""

import signal

from twisted.logger import globalLogPublisher

from bridge import signals


class Triggers:
    """The system event triggers a reactor keeps, run by name."""

    def __init__(self):
        self.triggers = {}

    def addSystemEventTrigger(self, phase, event, f):
        self.triggers[(phase, event)] = f


def test_the_first_signal_stops_and_a_later_one_or_one_after_another_stop_is_ignored():
    calls = []
    saved = {number: signal.getsignal(number) for number in signals.SIGNALS}
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for number in signals.SIGNALS:
            signal.signal(number, lambda n, frame: calls.append(n))
        reactor = Triggers()
        signals.stop_once(reactor)
        reactor.triggers[("after", "startup")]()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the supervisor's, say
        assert calls == [signal.SIGINT]
        reactor.triggers[("before", "shutdown")]()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert calls == [signal.SIGINT]
    finally:
        globalLogPublisher.removeObserver(events.append)
        for number, handler in saved.items():
            signal.signal(number, handler)
    ignored = [e for e in events if "while stopping" in e.get("log_format", "")]
    assert [e["signal"] for e in ignored] == ["SIGTERM", "SIGTERM"]


def test_a_stop_begun_elsewhere_makes_the_first_signal_a_second_one():
    calls = []
    saved = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, lambda n, frame: calls.append(n))
        reactor = Triggers()
        signals.stop_once(reactor)
        reactor.triggers[("after", "startup")]()
        reactor.triggers[("before", "shutdown")]()  # the supervisor is gone, say
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert calls == []
    finally:
        signal.signal(signal.SIGTERM, saved)
