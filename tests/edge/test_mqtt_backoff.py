"""Reconnect backoff: exponential growth, capped, jittered by the injected random source."""

import random

from bridge.edge.mqtt_connect import backoff_delay


def test_backoff_doubles_from_min_to_max_with_jitter_in_the_upper_half():
    rng = random.Random(7)
    for attempt, cap in enumerate([1, 2, 4, 8, 16, 32, 60, 60, 60]):
        delays = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # jittered, not constant


def test_backoff_is_reproducible_with_the_same_seed():
    first = [backoff_delay(a, 0.5, 30.0, random.Random(3)) for a in range(10)]
    again = [backoff_delay(a, 0.5, 30.0, random.Random(3)) for a in range(10)]
    assert first == again


def test_backoff_survives_huge_attempt_counts():
    assert 30 <= backoff_delay(10_000, 1.0, 60.0, random.Random(1)) <= 60
