"""The journal of platform changes (bridge.edge.registry_journal) and the glue around it
(bridge.glue.platform_changes) on a real SQLite file, with the registry's copy a plain
object: what the lookups see while changes wait, and across the processes of a DATA_DIR."""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from bridge.core.actions import DeleteDevice, Device, RenameDevice
from bridge.core.platform_changes import APPLIED, DELETE, RENAME, Applied
from bridge.edge.registry_journal import RegistryJournal
from bridge.glue.lookup import RegistryView
from bridge.glue.platform_changes import PlatformChanges
from bridge.sqlite import CorruptDatabase


class Copy:
    """The shared registry's copy as the lookups read it, the registry away."""

    def __init__(self, devices):
        self.devices = dict(devices)
        self.certificates = {}
        self.psk = {}

    def refresh(self):
        return False

    def reachable(self):
        return False


def process(path, devices, shared_file=True):
    """One process of the DATA_DIR: its lookups, its journal, its glue."""
    clock = Clock()
    view = RegistryView(clock)
    view.attach(Copy(devices))
    journal = RegistryJournal(path)
    changes = PlatformChanges(view, lambda: None, lambda: None, monotonic=clock.seconds,
                              wall=clock.seconds)
    changes.attach(journal, shared_file)
    return clock, view, changes, journal


def turn(clock, view):
    clock.advance(0)  # the next reactor turn: the view refreshes once
    view.refresh()


def test_changes_are_kept_in_order_with_keys_never_reused(tmp_path):
    path = str(tmp_path / "registry-journal.sqlite3")
    journal = RegistryJournal(path)
    first = journal.append(RENAME, "A", "B", 1.0)
    second = journal.append(DELETE, "C", None, 2.0)
    assert [c.id for c in journal.changes()] == [first.id, second.id]
    journal.remove([first.id, second.id])
    third = journal.append(DELETE, "D", None, 3.0)
    assert third.id > second.id  # AUTOINCREMENT: a key names one change only
    origin = journal.origin
    journal.close()
    again = RegistryJournal(path)
    assert again.origin == origin and again.changes() == [third]
    assert third.key == "%s:%d" % (origin, third.id)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again.close()


def test_a_change_holds_in_this_process_at_once_and_in_the_others_at_their_next_turn(
        tmp_path):
    path = str(tmp_path / "registry-journal.sqlite3")
    devices = {"tokA": Device("A", "t"), "tokC": Device("C", "t")}
    clock1, view1, changes1, journal1 = process(path, devices)
    clock2, view2, changes2, journal2 = process(path, devices)
    changes1.rename(RenameDevice("A", "B"))
    changes1.delete(DeleteDevice("C"))
    assert view1.get("tokA") == Device("B", "t") and view1.get("tokC") is None
    assert view2.get("tokA") == Device("A", "t")  # not yet: its turn has not come
    turn(clock2, view2)
    assert view2.get("tokA") == Device("B", "t") and view2.get("tokC") is None
    assert view2.token_of("B") == "tokA" and changes2.waiting() == 2
    assert changes1.notes() == ["platform changes waiting for the registry: 2"]
    # process 1 applies both; process 2 keeps them until its own copy is reloaded
    done = [c.id for c in changes1.to_apply(10)]
    changes1.applied([Applied(i, APPLIED) for i in done], committed=clock1.seconds())
    assert len(journal1) == 0
    clock2.advance(1)
    turn(clock2, view2)
    assert changes2.waiting() == 0 and view2.get("tokA") == Device("B", "t")
    assert changes2.loaded(clock2.seconds() - 0.5) is False  # a load from before: still on
    assert changes2.loaded(clock2.seconds()) is True and view2.renamed == {}
    for journal in (journal1, journal2):
        journal.close()


def test_changes_left_by_a_killed_process_hold_at_the_next_start(tmp_path):
    path = str(tmp_path / "registry-journal.sqlite3")
    devices = {"tokA": Device("A", "t")}
    _, _, changes, journal = process(path, devices, shared_file=False)
    changes.rename(RenameDevice("A", "B"))
    journal.close()  # as if killed: nothing was applied
    _, view, changes, journal = process(path, devices, shared_file=False)
    assert view.get("tokA") == Device("B", "t")
    assert [(c.name, c.new_name) for c in changes.to_apply(10)] == [("A", "B")]
    journal.close()


def test_a_rename_to_a_name_the_registry_would_refuse_is_not_journaled(tmp_path):
    path = str(tmp_path / "registry-journal.sqlite3")
    _, view, changes, journal = process(path, {"tokA": Device("A", "t")})
    changes.rename(RenameDevice("A", "bad\x1b[2Jname"))
    assert len(journal) == 0 and view.get("tokA") == Device("A", "t")
    journal.close()


def test_a_damaged_journal_is_set_aside_with_one_line(tmp_path):
    path = tmp_path / "registry-journal.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptDatabase, match="moved it to .*corrupt-"):
        RegistryJournal(str(path))
    assert not path.exists()
    RegistryJournal(str(path)).close()  # the next start begins with an empty one
