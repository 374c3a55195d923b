"""The supervisor's restart policy with a made-up clock: backoff, its reset once a worker
has run a while, and giving up on a worker that cannot start."""

from bridge.core.supervision import REFUSED, GiveUp, Restart, WorkerPolicy


def crash(policy, worker, now, status=1):
    return policy.ended(worker, now, status, "worker %d: boom" % worker)


def test_a_crash_after_start_is_restarted_with_a_doubling_delay_up_to_the_maximum():
    policy = WorkerPolicy(2, min_delay=1.0, max_delay=8.0, stable_after=60.0)
    delays = []
    now = 0.0
    for _ in range(6):
        policy.spawned(1)
        policy.started(1, now)
        now += 5.0  # crashes well before it counts as stable
        decision = crash(policy, 1, now, status=None)
        assert isinstance(decision, Restart) and decision.worker == 1
        delays.append(decision.delay)
        now += decision.delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert policy.restarts(1) == 6 and policy.restarts(2) == 0


def test_a_worker_that_ran_long_enough_starts_its_backoff_again():
    policy = WorkerPolicy(1, min_delay=1.0, max_delay=30.0, stable_after=60.0)
    policy.started(1, 0.0)
    assert crash(policy, 1, 1.0).delay == 1.0
    policy.started(1, 2.0)
    assert crash(policy, 1, 3.0).delay == 2.0
    policy.started(1, 4.0)
    assert crash(policy, 1, 4.0 + 60.0).delay == 1.0  # stable for 60 s: from the start


def test_the_workers_back_off_each_on_their_own():
    policy = WorkerPolicy(2)
    policy.started(1, 0.0)
    policy.started(2, 0.0)
    assert crash(policy, 1, 1.0).delay == 1.0
    policy.started(1, 2.0)
    assert crash(policy, 1, 3.0).delay == 2.0
    assert crash(policy, 2, 3.0).delay == 1.0


def test_a_worker_refusing_to_start_stops_everything_at_once_with_its_line():
    policy = WorkerPolicy(2)
    policy.spawned(2)
    decision = policy.ended(2, 0.5, REFUSED, "coapbridge: cannot listen for CoAP on UDP")
    assert decision == GiveUp(2, "coapbridge: cannot listen for CoAP on UDP")


def test_a_worker_crashing_at_start_up_is_retried_then_given_up():
    policy = WorkerPolicy(1, start_attempts=3)
    decisions = []
    for attempt in range(3):
        policy.spawned(1)
        decisions.append(policy.ended(1, float(attempt), 1, "Traceback: ImportError"))
    assert [type(d) for d in decisions] == [Restart, Restart, GiveUp]
    assert decisions[-1].reason == ("Traceback: ImportError (failed 3 times in a row at "
                                    "start-up)")


def test_a_start_resets_the_start_up_failures():
    policy = WorkerPolicy(1, start_attempts=2)
    policy.spawned(1)
    assert isinstance(crash(policy, 1, 0.0), Restart)
    policy.spawned(1)
    policy.started(1, 1.0)  # it came up this time
    assert policy.is_started(1)
    assert isinstance(crash(policy, 1, 2.0), Restart)
    policy.spawned(1)
    assert not policy.is_started(1)
    assert isinstance(crash(policy, 1, 3.0), Restart)  # one start-up failure in a row again
