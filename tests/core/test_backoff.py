"""The one backoff helper (bridge/core/backoff.py): exponential growth, capped, jittered
by the injected random source, or exact without one; reset by a success."""

import random

from bridge.core import backoff
from bridge.core.backoff import Backoff


def test_delays_double_from_low_to_high_with_jitter_in_the_upper_half():
    rng = random.Random(7)
    for attempt, cap in enumerate([1, 2, 4, 8, 16, 32, 60, 60, 60]):
        delays = [backoff.delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # jittered, not constant


def test_without_a_random_source_the_delays_are_exact():
    assert [backoff.delay(n, 0.5, 30.0) for n in range(9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_jitter_is_reproducible_with_the_same_seed():
    first = [backoff.delay(a, 0.5, 30.0, random.Random(3)) for a in range(10)]
    again = [backoff.delay(a, 0.5, 30.0, random.Random(3)) for a in range(10)]
    assert first == again


def test_huge_attempt_counts_stay_at_the_cap():
    assert 30 <= backoff.delay(10_000, 1.0, 60.0, random.Random(1)) <= 60
    assert backoff.delay(10_000, 1.0, 60.0) == 60


def test_failures_in_a_row_grow_the_delay_and_a_success_resets_it():
    retries = Backoff(1.0, 30.0)
    assert [retries.next() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert retries.attempt == 4
    retries.reset()
    assert retries.next() == 1.0


def test_a_jittered_backoff_draws_from_its_own_random_source():
    one, two = Backoff(1.0, 60.0, random.Random(5)), Backoff(1.0, 60.0, random.Random(5))
    first = [one.next() for _ in range(6)]
    assert first == [two.next() for _ in range(6)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(first, [1, 2, 4, 8, 16, 32]))
