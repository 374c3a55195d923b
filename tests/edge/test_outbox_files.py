"""Outbox files when the worker count changes: the leftovers are taken over (nothing
acknowledged stays behind), a file in use is left alone and a second bridge is refused."""

import os

import pytest

from bridge.settings import StartupError
from bridge.core.actions import Entry
from bridge.edge import outbox_files
from bridge.edge.outbox import Outbox
from outboxes import dead_letter, stored

TOPIC = "v1/gateway/telemetry"


def entry(n, device="Dev A"):
    return Entry(0, device, "default", TOPIC, b'{"n":%d}' % n, 1_700_000_000.0 + n)


def filled(path, count, device="Dev A"):
    box = Outbox(path)
    box.append([entry(n, device) for n in range(count)])
    return box


def test_leftovers_are_the_files_no_process_of_this_worker_count_owns(tmp_path):
    for name in ("outbox.sqlite3", "outbox-w1.sqlite3", "outbox-w2.sqlite3",
                 "outbox-w3.sqlite3", "outbox-w1.sqlite3-wal", "registry.sqlite3",
                 "outbox.sqlite3.corrupt-20260101T000000Z"):
        (tmp_path / name).write_bytes(b"")
    names = lambda workers: [os.path.basename(p)
                             for p in outbox_files.leftovers(str(tmp_path), workers)]
    assert names(1) == ["outbox-w1.sqlite3", "outbox-w2.sqlite3", "outbox-w3.sqlite3"]
    assert names(2) == ["outbox-w3.sqlite3", "outbox.sqlite3"]
    assert names(3) == ["outbox.sqlite3"]


def test_worker_one_takes_over_the_entries_of_the_leftover_files_and_removes_them(tmp_path):
    filled(str(tmp_path / "outbox.sqlite3"), 2500, "Dev B").close()  # 3 chunks
    filled(str(tmp_path / "outbox-w3.sqlite3"), 3, "Dev C").close()
    mine = filled(str(tmp_path / "outbox-w1.sqlite3"), 2)
    assert outbox_files.adopt_leftovers(mine, str(tmp_path), 2) == 2503
    entries = stored(mine)
    assert [(e.device, e.payload) for e in entries[:2]] == [("Dev A", b'{"n":0}'),
                                                            ("Dev A", b'{"n":1}')]
    assert sorted({e.device for e in entries}) == ["Dev A", "Dev B", "Dev C"]
    assert len(entries) == 2505 and (entries[-1].device, entries[-1].created) == (
        "Dev B", 1_700_002_499.0)  # each kept its receipt time
    assert sorted(os.listdir(tmp_path)) == ["outbox-w1.sqlite3", "outbox-w1.sqlite3-shm",
                                            "outbox-w1.sqlite3-wal"]
    mine.close()


def test_a_leftover_with_dead_letters_is_kept_without_its_entries(tmp_path):
    old = filled(str(tmp_path / "outbox.sqlite3"), 3)
    dead_letter(old, [(stored(old)[0].id, "refused by the platform")], 1.0)
    old.close()
    mine = Outbox(str(tmp_path / "outbox-w1.sqlite3"))
    assert outbox_files.adopt_leftovers(mine, str(tmp_path), 2) == 2
    kept = Outbox(str(tmp_path / "outbox.sqlite3"))
    assert stored(kept) == [] and len(kept.dead_letters()) == 1
    kept.close()
    mine.close()


def test_a_file_held_by_a_running_process_is_left_alone_and_a_second_holder_refused(tmp_path):
    running = filled(str(tmp_path / "outbox-w2.sqlite3"), 4)
    lock = outbox_files.hold(running)
    mine = Outbox(str(tmp_path / "outbox.sqlite3"))
    assert outbox_files.adopt_leftovers(mine, str(tmp_path), 1) == 0
    assert len(stored(running)) == 4
    second = Outbox(running.path)
    with pytest.raises(StartupError, match="is in use by another process"):
        outbox_files.hold(second)
    second.close()
    running.close()
    lock.release()
    assert outbox_files.adopt_leftovers(mine, str(tmp_path), 1) == 4
    mine.close()
