"""The durable outbox on a tmp_path SQLite file (bridge.edge.outbox.Outbox)."""

import os
import sqlite3
import stat

import pytest

from bridge.core.actions import Entry
from bridge.edge.outbox import Outbox
from outboxes import dead_letter, stored

NOW = 1_700_000_000.5
TOPIC = "v1/gateway/telemetry"


def row(n, device="Dev A", created=NOW):
    """An uplink as the core hands it over: no id yet (0)."""
    return Entry(0, device, "thermo", TOPIC, b'{"%s":[{"values":{"n":%d}}]}'
                 % (device.encode(), n), created + n)


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "data" / "outbox.sqlite3")


@pytest.fixture
def outbox(db_path):
    box = Outbox(db_path)
    yield box
    box.close()


def reopen(box):
    """Close ``box`` and open its file again, as after a restart of the bridge."""
    box.close()
    return Outbox(box.path)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- append and load ------------------------------------------------------------------

def test_append_returns_increasing_ids_in_row_order(outbox):
    first = outbox.append([row(1), row(2), row(3)])
    second = outbox.append([row(4)])
    ids = first + second
    assert len(ids) == 4 and ids == sorted(ids) and len(set(ids)) == 4


def test_a_write_larger_than_one_insert_statement_stores_every_row_in_order(outbox):
    rows = [row(n, device="Dev %d" % (n % 7)) for n in range(1, 72)]  # 32 + 32 + 7 rows
    ids = outbox.append(rows)
    assert ids == list(range(ids[0], ids[0] + 71))
    loaded = stored(outbox)
    assert [entry.id for entry in loaded] == ids
    assert [e._replace(id=0) for e in loaded] == rows


def test_append_of_no_rows_returns_no_ids(outbox):
    assert outbox.append([]) == []
    assert outbox.stats() == (0, 0)


def test_load_after_reopening_returns_every_entry_in_id_order(outbox):
    ids = outbox.append([row(1), row(2, device="Dev B")]) + outbox.append([row(3)])
    box = reopen(outbox)
    try:
        assert stored(box) == [
            Entry(ids[0], "Dev A", "thermo", TOPIC, row(1).payload, NOW + 1),
            Entry(ids[1], "Dev B", "thermo", TOPIC, row(2, device="Dev B").payload, NOW + 2),
            Entry(ids[2], "Dev A", "thermo", TOPIC, row(3).payload, NOW + 3)]
    finally:
        box.close()


def test_loaded_payload_is_bytes_exactly_as_stored(outbox):
    payload = bytes(range(256))
    outbox.append([Entry(0, "Dev A", "thermo", TOPIC, payload, NOW)])
    [entry] = stored(outbox)
    assert type(entry.payload) is bytes and entry.payload == payload


def test_ids_are_not_reused_after_the_newest_entries_are_deleted_and_the_file_reopened(outbox):
    ids = outbox.append([row(1), row(2)])
    outbox.delete(ids)
    box = reopen(outbox)
    try:
        [new] = box.append([row(3)])
        assert new > max(ids)
    finally:
        box.close()


def test_a_file_from_the_autoincrement_schema_keeps_its_entries_and_never_reuses_ids(db_path):
    # versions before the outbox_sequence table declared the id AUTOINCREMENT
    os.makedirs(os.path.dirname(db_path))
    old = sqlite3.connect(db_path)
    old.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
            device_type TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
            created REAL NOT NULL);""")
    old.executemany("INSERT INTO outbox (device, device_type, topic, payload, created) "
                    "VALUES (?, ?, ?, ?, ?)", [row(n)[1:] for n in range(1, 8)])
    old.execute("DELETE FROM outbox WHERE id > 2")  # delivered: only sqlite_sequence knows 7
    old.commit()
    old.close()
    box = Outbox(db_path)
    try:
        assert [entry.id for entry in stored(box)] == [1, 2]
        assert box.append([row(8)]) == [8]
        box.delete([1, 2, 8])
        box = reopen(box)
        assert box.append([row(9)]) == [9]
    finally:
        box.close()


def test_a_failing_row_rolls_back_its_whole_group(outbox):
    outbox.append([row(1)])
    with pytest.raises(sqlite3.IntegrityError):
        outbox.append([row(2), Entry(0, None, "thermo", TOPIC, b"{}", NOW)])
    assert [e.payload for e in stored(outbox)] == [row(1).payload]
    assert len(outbox.append([row(3)])) == 1  # the connection is usable again


# -- delete and dead letters ------------------------------------------------------------

def test_a_full_disk_is_reported_as_full_on_every_write_and_the_outbox_recovers(outbox):
    # SQLITE_FULL ends the transaction inside SQLite; the ROLLBACK that followed failed with
    # "cannot rollback - no transaction is active", and that hid the real error from the
    # second failure on. max_page_count makes SQLite report the same SQLITE_FULL.
    outbox.append([row(1)])
    outbox._db.execute("PRAGMA max_page_count = %d" % outbox._db.execute(
        "PRAGMA page_count").fetchall()[0][0]).fetchall()
    big = Entry(0, "Dev A", "default", TOPIC, b"x" * 20000, 1.0)
    for _ in range(3):
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            outbox.append([big])
    assert not outbox._db.in_transaction
    outbox._db.execute("PRAGMA max_page_count = 1073741823").fetchall()
    outbox.append([big])
    assert outbox.stats() == (2, len(row(1).payload) + 20000)


def test_delete_removes_only_the_given_entries(outbox):
    ids = outbox.append([row(1), row(2), row(3)])
    outbox.delete([ids[0], ids[2]])
    assert [e.id for e in stored(outbox)] == [ids[1]]


def test_delete_of_runs_and_gaps_in_any_order_removes_exactly_those(outbox):
    ids = outbox.append([row(n) for n in range(12)])
    gone = [ids[9], ids[0], ids[2], ids[1], ids[7], ids[10], ids[11], ids[10]]
    outbox.delete(gone)
    assert [e.id for e in stored(outbox)] == [i for i in ids if i not in gone]


def test_one_write_stores_removes_and_sets_aside_together(outbox):
    old = outbox.append([row(1), row(2), row(3)])
    new = outbox.write([row(4)], [old[0]], [(old[1], "refused")], 5.0)
    assert [e.id for e in stored(outbox)] == [old[2]] + new
    assert [(d[0], d[5]) for d in outbox.dead_letters()] == [(old[1], "refused")]


def test_delete_of_unknown_id_is_harmless(outbox):
    [entry_id] = outbox.append([row(1)])
    outbox.delete([entry_id + 100])
    assert [e.id for e in stored(outbox)] == [entry_id]


def test_dead_letter_moves_the_entry_aside_with_its_reason(outbox):
    ids = outbox.append([row(1), row(2)])
    dead_letter(outbox, [(ids[0], "PUBACK reason 0x99")], NOW + 50)
    assert [e.id for e in stored(outbox)] == [ids[1]]
    assert outbox.dead_letters() == [
        (ids[0], "Dev A", TOPIC, row(1).payload, NOW + 50, "PUBACK reason 0x99")]


def test_dead_letters_survive_reopening(outbox):
    [entry_id] = outbox.append([row(1)])
    dead_letter(outbox, [(entry_id, "PUBACK reason 0x87")], NOW)
    box = reopen(outbox)
    try:
        assert stored(box) == []
        assert [(d[0], d[5]) for d in box.dead_letters()] == [(entry_id, "PUBACK reason 0x87")]
    finally:
        box.close()


def test_dead_letter_of_unknown_id_records_nothing(outbox):
    outbox.append([row(1)])
    dead_letter(outbox, [(999, "nope")], NOW)
    assert outbox.dead_letters() == []
    assert len(stored(outbox)) == 1


# -- stats ------------------------------------------------------------------------------

def test_stats_count_entries_and_payload_bytes_still_to_deliver(outbox):
    assert outbox.stats() == (0, 0)
    ids = outbox.append([Entry(0, "Dev A", "thermo", TOPIC, b"abc", NOW),
                         Entry(0, "Dev A", "thermo", TOPIC, b"defgh", NOW),
                         Entry(0, "Dev B", "meter", TOPIC, b"ij", NOW)])
    assert outbox.stats() == (3, 10)
    outbox.delete([ids[0]])
    dead_letter(outbox, [(ids[1], "refused")], NOW)
    assert outbox.stats() == (1, 2)


# -- the file ---------------------------------------------------------------------------

def test_database_file_is_private_and_in_wal_mode(db_path, outbox):
    outbox.append([row(1)])
    assert mode(db_path) == 0o600
    assert mode(os.path.dirname(db_path)) == 0o700
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            assert mode(db_path + suffix) == 0o600, suffix
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


def test_files_are_private_even_with_a_permissive_umask(tmp_path):
    path = str(tmp_path / "outbox.sqlite3")
    old = os.umask(0)
    try:
        box = Outbox(path)
        try:
            box.append([row(1)])
            paths = [path] + [path + s for s in ("-wal", "-shm") if os.path.exists(path + s)]
            assert {p: mode(p) for p in paths} == {p: 0o600 for p in paths}
        finally:
            box.close()
    finally:
        os.umask(old)


def test_synchronous_defaults_to_full_and_can_be_normal(tmp_path):
    full = Outbox(str(tmp_path / "full.sqlite3"))
    normal = Outbox(str(tmp_path / "normal.sqlite3"), "normal")
    try:
        assert full._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert normal._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        full.close()
        normal.close()


# -- durability: committed before append returns ------------------------------------------

def test_second_instance_sees_rows_as_soon_as_append_returns(db_path, outbox):
    other = Outbox(db_path)
    try:
        [entry_id] = outbox.append([row(1)])
        assert [e.id for e in stored(other)] == [entry_id]
        outbox.delete([entry_id])
        assert stored(other) == [] and other.stats() == (0, 0)
    finally:
        other.close()


def test_rows_of_one_instance_are_visible_to_a_plain_sqlite_reader(db_path, outbox):
    ids = outbox.append([row(1), row(2)])
    reader = sqlite3.connect(db_path)
    try:
        assert reader.execute("SELECT id FROM outbox ORDER BY id").fetchall() == [
            (i,) for i in ids]
    finally:
        reader.close()


def test_two_instances_appending_alternately_get_distinct_increasing_ids(db_path, outbox):
    other = Outbox(db_path)
    try:
        ids = outbox.append([row(1)]) + other.append([row(2)]) + outbox.append([row(3)])
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [e.id for e in stored(other)] == ids
    finally:
        other.close()


def test_removals_alone_are_committed_without_a_sync_and_storing_ones_with_it(outbox):
    statements, db = [], outbox._db
    ids = outbox.append([row(1), row(2), row(3)])
    db.set_trace_callback(statements.append)
    try:
        outbox.write([row(4)], [ids[0]], [], NOW)  # stores: FULL
        outbox.delete([ids[1]])  # removals alone: NORMAL
        dead_letter(outbox, [(ids[2], "refused")], NOW)  # NORMAL
        outbox.append([row(5)])  # FULL again
    finally:
        db.set_trace_callback(None)
    level, levels = "FULL", []  # the connection's level at each COMMIT
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            level = sql.split("=")[1]
        elif sql == "COMMIT":
            levels.append(level)
    assert levels == ["FULL", "NORMAL", "NORMAL", "FULL"]
    assert db.execute("PRAGMA synchronous").fetchall() == [(2,)]  # FULL
    box = reopen(outbox)
    try:
        assert [e.payload for e in stored(box)] == [row(4).payload, row(5).payload]
    finally:
        box.close()


def test_a_failing_removal_leaves_the_connection_syncing(outbox):
    db = outbox._db
    ids = outbox.append([row(1)])
    db.execute("CREATE TRIGGER no_delete BEFORE DELETE ON outbox "
               "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.IntegrityError):
        outbox.delete(ids)
    assert db.execute("PRAGMA synchronous").fetchall() == [(2,)]
    assert [e.id for e in stored(outbox)] == ids


def test_an_outbox_opened_with_synchronous_normal_stays_normal(db_path):
    box = Outbox(db_path, synchronous="NORMAL")
    try:
        box.delete(box.append([row(1)]))
        assert box._db.execute("PRAGMA synchronous").fetchall() == [(1,)]
    finally:
        box.close()
