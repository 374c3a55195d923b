"""The one-timer helper (bridge/edge/timer.py) on a ``Clock``."""

import math

from twisted.internet.task import Clock

from bridge.edge.timer import OneTimer


def make():
    clock = Clock()
    fired = []
    timer = OneTimer(clock, lambda: fired.append(clock.seconds()))
    return clock, timer, fired


def test_it_fires_once_at_the_earliest_time_it_was_armed_for():
    clock, timer, fired = make()
    timer.arm(5.0)
    timer.arm(3.0)  # earlier: moves the call
    timer.arm(4.0)  # later: leaves it
    assert len(clock.getDelayedCalls()) == 1 and timer.due == 3.0
    clock.advance(3)
    assert fired == [3.0] and timer.due == math.inf and clock.getDelayedCalls() == []
    clock.advance(10)
    assert fired == [3.0]


def test_nothing_due_arms_nothing_and_a_due_time_past_fires_on_the_next_turn():
    clock, timer, fired = make()
    timer.arm(None)
    timer.arm(math.inf)
    assert clock.getDelayedCalls() == []
    clock.advance(7)
    timer.arm(2.0)
    clock.advance(0)
    assert fired == [7.0]


def test_cancel_leaves_no_call_and_it_can_be_armed_again():
    clock, timer, fired = make()
    timer.arm(1.0)
    timer.cancel()
    assert clock.getDelayedCalls() == []
    timer.cancel()  # twice: no error
    timer.arm(2.0)
    clock.advance(2)
    assert fired == [2.0]


def test_the_fire_callback_may_arm_it_again():
    clock = Clock()
    fired = []

    def fire():
        fired.append(clock.seconds())
        if len(fired) < 3:
            timer.arm(clock.seconds() + 1)
    timer = OneTimer(clock, fire)
    timer.arm(1.0)
    clock.pump([1.0] * 5)
    assert fired == [1.0, 2.0, 3.0]
