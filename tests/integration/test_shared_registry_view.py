"""The bridge's view of a shared registry (bridge.edge.shared_registry) on a real PostgreSQL.

The reactor is a ``Clock`` (the retry delays) that also takes ``callFromThread`` into a
queue the test runs: the thread pool is real, so the LISTENing connection, the loads
and the writes run as they do in the bridge; ``pump`` runs what the threads hand back
until a condition holds (or a generous deadline passes)."""

from __future__ import annotations

import queue
import time

import pytest

pytest.importorskip("psycopg", reason="psycopg is installed on CPython only (setup.cfg)")
pytestmark = pytest.mark.integration
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.threadpool import ThreadPool

from bridge.core.actions import Device
from bridge.edge import shared_registry
from bridge.edge.shared_registry import Delta, delta, open_shared
from bridge.registry import RegistryError
from bridge.registry_pg import PgRegistry, RegistryUnavailable
from bridge.registry_url import parse


class ThreadedClock(Clock):
    def __init__(self):
        super().__init__()
        self.from_threads: "queue.Queue" = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self.from_threads.put((f, args, kwargs))

    def pump(self, predicate, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s" % what)
            try:
                f, args, kwargs = self.from_threads.get(timeout=0.02)
            except queue.Empty:
                continue
            f(*args, **kwargs)


@pytest.fixture
def clock():
    return ThreadedClock()


@pytest.fixture
def pool():
    threads = ThreadPool(minthreads=1, maxthreads=3, name="test-registry")
    threads.start()
    yield threads
    threads.stop()


@pytest.fixture
def events():
    seen = []

    def observer(event):
        if event.get("log_namespace", "").startswith("coapbridge.registry"):
            seen.append(event)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def writer(pg_url):
    cli = PgRegistry(pg_url, "cli")
    yield cli
    cli.close()


@pytest.fixture
def view(pg_url, writer, clock, pool):
    registry = open_shared(parse(pg_url, ""), 2, clock, pool)
    registry.start()
    yield registry
    done = []
    registry.stop().addBoth(done.append)
    clock.pump(lambda: done, what="the registry to stop")
    assert done == [None]


def refreshed(view, token, expected):
    """True once a refresh puts ``expected`` in place for ``token``."""
    view.refresh()
    return view.devices.get(token) == expected


def fired(clock, d):
    results = []
    d.addBoth(results.append)
    clock.pump(lambda: results, what="the Deferred")
    return results[0]


def test_a_change_made_elsewhere_reaches_the_copy_at_a_refresh_with_no_query(clock, view,
                                                                            writer):
    assert view.devices == {} and view.refresh() is False
    writer.add("Dev A", "tokA", "thermo")
    clock.pump(lambda: view._pending, what="the notification")
    assert view.devices == {}  # nothing changes between refreshes: one copy per turn
    assert view.refresh() is True
    assert view.devices == {"tokA": Device("Dev A", "thermo")}
    assert view.refresh() is False
    copy = view.devices
    writer.remove("Dev A")
    clock.pump(lambda: refreshed(view, "tokA", None), what="the removal")
    assert view.devices is copy  # updated in place: the core's reference stays live


def test_writes_run_in_the_pool_and_answer_like_the_sqlite_registry(clock, view, writer):
    assert fired(clock, view.run("provision", "P1", "tp1", "sensor", "create_new")) is True
    assert fired(clock, view.run("provision", "P1", "tp2", "sensor", "create_new")) is False
    clock.pump(lambda: refreshed(view, "tp1", Device("P1", "sensor")), what="provisioned")
    assert fired(clock, view.run("rename", "P1", "P2")) is True
    clock.pump(lambda: refreshed(view, "tp1", Device("P2", "sensor")), what="renamed")
    writer.add("Taken", "tk", "x")
    failure = fired(clock, view.run("rename", "P2", "Taken"))
    assert failure.check(RegistryError) and "already exists" in str(failure.value)
    assert fired(clock, view.run("mark_deleted", "P2")) is True
    clock.pump(lambda: refreshed(view, "tp1", None), what="deleted")


def test_the_registry_lost_and_back(clock, view, writer, postgres, events):
    writer.add("Dev A", "tokA", "thermo")
    clock.pump(lambda: refreshed(view, "tokA", Device("Dev A", "thermo")), what="the device")
    postgres.stop()
    try:
        clock.pump(lambda: not view.reachable(), what="the loss to be noticed")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert len(warnings) == 1 and "unreachable" in warnings[0]["log_format"]
        assert view.devices == {"tokA": Device("Dev A", "thermo")}  # the last copy serves
        failure = fired(clock, view.run("add", "Dev B", "tokB", "x"))
        assert failure.check(RegistryUnavailable)
        delays = []
        for _ in range(3):  # attempts while it is down: no new warning, longer delays
            clock.pump(lambda: view._retry is not None, what="a reconnection to be planned")
            delays.append(view._retry.getTime() - clock.seconds())
            clock.advance(delays[-1])
            assert view._retry is None  # the attempt runs
        clock.pump(lambda: view._retry is not None, what="the last attempt to fail")
        assert delays == [shared_registry.MIN_DELAY * 2 ** n for n in range(3)]
        assert len([e for e in events if e["log_level"] == LogLevel.warn]) == 1
        assert not view.reachable()
    finally:
        postgres.start()
    clock.advance(60)
    clock.pump(view.reachable, what="the registry to be back")
    backs = [e for e in events if "reachable again" in e["log_format"]]
    assert len(backs) == 1 and backs[0]["log_level"] == LogLevel.info
    writer.add("Dev C", "tokC", "x")  # a new pooled connection (the old ones are dead)
    clock.pump(lambda: refreshed(view, "tokC", Device("Dev C", "x")), what="a later change")
    assert fired(clock, view.run("mark_deleted", "Dev A")) is True
    clock.pump(lambda: refreshed(view, "tokA", None), what="a write after recovery")


def test_changes_with_no_refresh_are_applied_past_a_bound_and_still_reported(clock, view,
                                                                           writer):
    for n in range(shared_registry.MAX_PENDING + 2):
        writer.add("D%d" % n, "t%d" % n, "x")
        token = "t%d" % n
        clock.pump(lambda: token in view.devices or any(
            token in loaded.change.changed[0] for loaded in view._pending), what="change %d" % n)
    assert len(view._pending) <= shared_registry.MAX_PENDING
    assert view.devices  # applied without a refresh
    assert view.refresh() is True  # and told at the next one
    assert len(view.devices) == shared_registry.MAX_PENDING + 2 and view.refresh() is False


def test_a_delta_holds_only_what_changed_and_applies_in_order():
    a, b = Device("A", "t"), Device("B", "t")
    old = ({"t1": a, "t2": b}, {"c1": a}, {"p1": (a, b"k")})
    new = ({"t1": a, "t3": b}, {}, {"p1": (a, b"k2")})
    change = delta(old, new)
    assert change == Delta((["t2"], ["c1"], []), ({"t3": b}, {}, {"p1": (a, b"k2")}))
    assert not delta(new, new)


# -- the platform's changes, journaled and applied by the listener ------------------------

@pytest.fixture
def journaled(tmp_path, clock, view):
    """The bridge's glue around ``view``: its lookups, the journal, the platform changes."""
    from bridge.edge.registry_journal import RegistryJournal
    from bridge.glue.lookup import RegistryView
    from bridge.glue.platform_changes import PlatformChanges
    lookups = RegistryView(clock)
    lookups.attach(view)
    journal = RegistryJournal(str(tmp_path / "registry-journal.sqlite3"))
    changes = PlatformChanges(lookups, lambda: None, lambda: None)
    changes.attach(journal, shared_file=False)
    view.changes = changes
    yield lookups, changes, journal
    changes.detach()
    journal.close()


def settled(view, journal):
    """True once the journal is empty and the copy shows what was applied."""
    view.refresh()
    return len(journal) == 0 and not view.changes.overlay.awaiting


def test_a_journaled_change_holds_at_once_and_leaves_the_overlay_with_the_load(
        clock, view, writer, journaled):
    from bridge.core.actions import DeleteDevice, RenameDevice
    lookups, changes, journal = journaled
    writer.add("Old", "tokO", "t")
    writer.add("Gone", "tokG", "t")
    clock.pump(lambda: refreshed(view, "tokG", Device("Gone", "t")), what="the devices")
    changes.rename(RenameDevice("Old", "New"))
    changes.delete(DeleteDevice("Gone"))
    assert len(journal) == 2
    assert lookups.get("tokO") == Device("New", "t") and lookups.get("tokG") is None
    assert lookups.token_of("New") == "tokO" and lookups.token_of("Old") is None
    seen = []

    def turn():  # a reactor turn: a refresh, then a request's lookup
        done = settled(view, journal)
        seen.append(lookups.get("tokO"))
        return done
    clock.pump(turn, what="both applied")
    assert len(seen) > 1 and set(seen) == {Device("New", "t")}  # never the old name
    assert view.devices["tokO"] == Device("New", "t")  # now from the registry's copy
    assert "tokG" not in view.devices and lookups.renamed == {}
    assert {e.name: e.deleted for e in writer.entries()} == {"New": False, "Gone": True}


def test_a_change_the_registry_refuses_is_refused_alone(clock, view, writer, journaled):
    from bridge.core.actions import DeleteDevice, RenameDevice
    lookups, changes, journal = journaled
    events = []
    globalLogPublisher.addObserver(events.append)
    for name, token in (("X", "tokX"), ("Y", "tokY"), ("Z", "tokZ")):
        writer.add(name, token, "t")
    clock.pump(lambda: refreshed(view, "tokZ", Device("Z", "t")), what="the devices")
    changes.rename(RenameDevice("X", "Y"))  # Y exists in the registry
    changes.delete(DeleteDevice("Z"))
    clock.pump(lambda: settled(view, journal), what="both applied")
    assert {e.name: e.deleted for e in writer.entries()} == {"X": False, "Y": False,
                                                            "Z": True}
    assert lookups.get("tokX") == Device("X", "t")  # as the registry has it
    globalLogPublisher.removeObserver(events.append)
    refusals = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(refusals) == 1 and "already exists" in refusals[0]["error"], refusals


def test_a_key_applied_before_is_not_applied_again(pg_url, writer):
    """A bridge killed after the registry's commit and before its journal forgot the change
    applies it again at its next start: the registry takes each key once."""
    from bridge.core.platform_changes import RENAME, Change
    from bridge.registry_pg import APPLIED, DUPLICATE, Applied, apply_changes, connect
    writer.add("A", "tokA", "t")
    change = Change(1, "origin:1", RENAME, "A", "B")
    with connect(pg_url, autocommit=True) as conn:
        assert apply_changes(conn, [change]) == [Applied(1, APPLIED)]
        writer.rename("B", "A")  # the operator renames it back meanwhile
        assert apply_changes(conn, [change]) == [Applied(1, DUPLICATE)]
    assert [e.name for e in writer.entries()] == ["A"]
