"""Device registry on a tmp_path SQLite file (bridge.registry)."""

import os
import stat

import pytest

from bridge.core.actions import Device
from bridge.registry import DeviceRow, Entry, Registry, RegistryError, mask, read_csv


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "data" / "registry.sqlite3")


@pytest.fixture
def registry(db_path):
    reg = Registry(db_path)
    yield reg
    reg.close()


@pytest.fixture
def second(db_path, registry):
    """Another connection to the same file, as the running bridge vs. the CLI."""
    reg = Registry(db_path)
    yield reg
    reg.close()


def write_csv(tmp_path, text, name="devices.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


# -- add / lookup / remove ------------------------------------------------------------

def test_add_then_lookup_returns_device(registry):
    assert registry.add("Dev A", "tokA", "thermo") == Entry("Dev A", "tokA", "thermo")
    assert registry.lookup("tokA") == Device("Dev A", "thermo")


def test_lookup_unknown_token_is_none(registry):
    registry.add("Dev A", "tokA", "thermo")
    assert registry.lookup("tokB") is None
    assert registry.lookup("toka") is None  # tokens are case-sensitive


def test_remove_makes_token_unknown(registry):
    registry.add("Dev A", "tokA", "thermo")
    assert registry.lookup("tokA") is not None  # cached
    assert registry.remove("Dev A") is True
    assert registry.lookup("tokA") is None
    assert registry.entries() == []


def test_remove_unknown_device_returns_false(registry):
    assert registry.remove("nobody") is False


def test_entries_are_sorted_by_name(registry):
    registry.add("b", "t2", "x")
    registry.add("a", "t1", "y")
    assert registry.entries() == [Entry("a", "t1", "y"), Entry("b", "t2", "x")]


def test_duplicate_name_is_refused(registry):
    registry.add("Dev A", "tokA", "thermo")
    with pytest.raises(RegistryError, match="already exists"):
        registry.add("Dev A", "tokB", "thermo")
    assert registry.lookup("tokB") is None


def test_duplicate_token_is_refused_without_revealing_it(registry):
    registry.add("Dev A", "secretToken1", "thermo")
    with pytest.raises(RegistryError) as info:
        registry.add("Dev B", "secretToken1", "thermo")
    assert "token" in str(info.value)
    assert "secretToken1" not in str(info.value)
    assert registry.entries() == [Entry("Dev A", "secretToken1", "thermo")]


@pytest.mark.parametrize("name,token,device_type", [
    ("", "tok", "t"),
    ("   ", "tok", "t"),
    ("Dev", "", "t"),
    ("Dev", "a/b", "t"),
    ("Dev", "a?b", "t"),
    ("Dev", "a#b", "t"),
    ("Dev", "a b", "t"),
    ("Dev", "a\tb", "t"),
    ("Dev", "tok", ""),
])
def test_invalid_device_is_refused(registry, name, token, device_type):
    with pytest.raises(RegistryError):
        registry.add(name, token, device_type)
    assert registry.entries() == []


# -- the running bridge sees changes made by another connection --------------------------

def test_lookup_sees_addition_through_second_instance(registry, second):
    assert second.lookup("tokA") is None  # loads (empty) cache
    registry.add("Dev A", "tokA", "thermo")
    assert second.lookup("tokA") == Device("Dev A", "thermo")


def test_lookup_sees_removal_through_second_instance(registry, second):
    registry.add("Dev A", "tokA", "thermo")
    assert second.lookup("tokA") == Device("Dev A", "thermo")
    registry.remove("Dev A")
    assert second.lookup("tokA") is None


def test_the_copy_answers_until_the_next_refresh(registry, second):
    registry.add("Dev A", "tokA", "thermo")
    assert second.lookup("tokA") == Device("Dev A", "thermo")
    registry.remove("Dev A")
    assert second.devices.get("tokA") == Device("Dev A", "thermo")  # no query
    assert second.refresh() is True
    assert second.devices.get("tokA") is None
    assert second.refresh() is False  # nothing changed since: the copy is kept


def test_a_change_made_through_this_instance_counts_at_the_next_refresh(registry):
    registry.add("Dev A", "tokA", "thermo")
    copy = registry.devices  # the same dict stays the live view
    registry.refresh()
    assert copy.get("tokA") == Device("Dev A", "thermo")
    registry.rename("Dev A", "Dev Z")
    registry.refresh()
    assert copy.get("tokA") == Device("Dev Z", "thermo")
    registry.mark_deleted("Dev Z")
    registry.refresh()
    assert copy.get("tokA") is None and registry.devices is copy


def test_a_refresh_sees_a_token_added_by_another_connection(registry, second):
    assert second.lookup("tokA") is None
    registry.add("Dev A", "tokA", "thermo")
    assert second.devices.get("tokA") is None
    second.refresh()
    assert second.devices.get("tokA") == Device("Dev A", "thermo")


def test_lookup_sees_rename_and_delete_through_second_instance(registry, second):
    registry.add("Dev A", "tokA", "thermo")
    assert second.lookup("tokA") == Device("Dev A", "thermo")
    registry.rename("Dev A", "Dev Z")
    assert second.lookup("tokA") == Device("Dev Z", "thermo")
    registry.mark_deleted("Dev Z")
    assert second.lookup("tokA") is None


def test_registry_persists_across_reopen(db_path):
    first = Registry(db_path)
    first.add("Dev A", "tokA", "thermo")
    first.close()
    reopened = Registry(db_path)
    try:
        assert reopened.lookup("tokA") == Device("Dev A", "thermo")
    finally:
        reopened.close()


# -- mark_deleted / rename -------------------------------------------------------------------

def test_mark_deleted_hides_token_but_keeps_entry(registry):
    registry.add("Dev A", "tokA", "thermo")
    assert registry.lookup("tokA") is not None
    assert registry.mark_deleted("Dev A") is True
    assert registry.lookup("tokA") is None
    assert registry.entries() == [Entry("Dev A", "tokA", "thermo", deleted=True)]


def test_mark_deleted_unknown_device_returns_false(registry):
    assert registry.mark_deleted("nobody") is False


def test_rename_changes_name_seen_by_lookup(registry):
    registry.add("Dev A", "tokA", "thermo")
    assert registry.lookup("tokA") == Device("Dev A", "thermo")
    assert registry.rename("Dev A", "Dev B") is True
    assert registry.lookup("tokA") == Device("Dev B", "thermo")


def test_rename_unknown_device_returns_false(registry):
    assert registry.rename("nobody", "x") is False


def test_rename_onto_existing_name_is_refused_with_registry_error(registry):
    registry.add("Dev A", "tokA", "thermo")
    registry.add("Dev B", "tokB", "thermo")
    with pytest.raises(RegistryError):
        registry.rename("Dev A", "Dev B")
    assert registry.lookup("tokA") == Device("Dev A", "thermo")


def test_rename_to_empty_name_is_refused(registry):
    registry.add("Dev A", "tokA", "thermo")
    with pytest.raises(RegistryError):
        registry.rename("Dev A", "")


# -- import ------------------------------------------------------------------------------------

def test_import_rows_adds_all(registry):
    assert registry.import_rows([("a", "t1", "x"), ("b", "t2", "y")]) == 2
    assert registry.lookup("t1") == Device("a", "x")
    assert registry.lookup("t2") == Device("b", "y")


def test_import_rows_with_invalid_row_adds_nothing_and_names_the_row(registry):
    with pytest.raises(RegistryError, match="row 2"):
        registry.import_rows([("a", "t1", "x"), ("b", "bad token", "y"), ("c", "t3", "z")])
    assert registry.entries() == []


def test_import_rows_conflicting_with_existing_adds_nothing(registry):
    registry.add("old", "t0", "x")
    with pytest.raises(RegistryError, match="nothing added"):
        registry.import_rows([("a", "t1", "x"), ("b", "t0", "y")])
    assert registry.entries() == [Entry("old", "t0", "x")]
    assert registry.lookup("t1") is None


def test_import_rows_with_duplicate_names_inside_batch_adds_nothing(registry):
    with pytest.raises(RegistryError):
        registry.import_rows([("a", "t1", "x"), ("a", "t2", "x")])
    assert registry.entries() == []


def test_import_conflict_message_does_not_reveal_token(registry):
    registry.add("old", "verySecret99", "x")
    with pytest.raises(RegistryError) as info:
        registry.import_rows([("new", "verySecret99", "x")])
    assert "verySecret99" not in str(info.value)


def test_read_csv_with_header_and_type_column(tmp_path):
    path = write_csv(tmp_path, "name,token,type\nDev A,tokA,thermo\nDev B,tokB,\nDev C,tokC\n")
    assert read_csv(path, "default") == [
        DeviceRow("Dev A", "tokA", "thermo"), DeviceRow("Dev B", "tokB", "default"),
        DeviceRow("Dev C", "tokC", "default")]


def test_read_csv_without_header_and_without_type_column(tmp_path):
    path = write_csv(tmp_path, "Dev A,tokA\n\n , \nDev B , tokB \n")
    assert read_csv(path, "meter") == [DeviceRow("Dev A", "tokA", "meter"),
                                       DeviceRow("Dev B", "tokB", "meter")]


def test_read_csv_header_only_counts_on_first_line(tmp_path):
    path = write_csv(tmp_path, "Dev A,tokA\nname,token\n")
    assert read_csv(path, "d") == [DeviceRow("Dev A", "tokA", "d"),
                                   DeviceRow("name", "token", "d")]


@pytest.mark.parametrize("line", ["only-one-cell", "a,b,c,d"])
def test_read_csv_wrong_column_count_names_the_line(tmp_path, line):
    path = write_csv(tmp_path, "name,token\nDev A,tokA\n%s\n" % line)
    with pytest.raises(RegistryError, match="line 3"):
        read_csv(path, "d")


def test_read_csv_rows_import_into_registry(tmp_path, registry):
    path = write_csv(tmp_path, "name,token,type\nDev A,tokA,thermo\nDev B,tokB\n")
    assert registry.import_rows(read_csv(path, "default")) == 2
    assert registry.lookup("tokB") == Device("Dev B", "default")


def test_read_csv_with_bom_still_recognises_header(tmp_path):
    path = write_csv(tmp_path, "name,token,type\nDev A,tokA,thermo\n", encoding="utf-8-sig")
    assert read_csv(path, "default") == [DeviceRow("Dev A", "tokA", "thermo")]


# -- secrets -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["a", "ab", "abcd", "abcde", "A1_TEST_TOKEN", "x" * 64])
def test_mask_never_returns_the_full_token(token):
    masked = mask(token)
    assert token not in masked
    assert masked != token


def test_mask_keeps_only_first_four_characters():
    assert mask("A1_TEST_TOKEN") == "A1_T…"
    assert mask("abcd") == "…"


@pytest.mark.parametrize("token", [None, ""])
def test_mask_of_no_token(token):
    assert mask(token) == "<none>"


def test_db_file_is_private(registry, db_path):
    registry.add("Dev A", "tokA", "thermo")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    for suffix in ("-wal", "-shm"):  # WAL side files hold the same secrets
        if os.path.exists(db_path + suffix):
            assert stat.S_IMODE(os.stat(db_path + suffix).st_mode) == 0o600


def test_data_directory_is_created_private(registry, db_path):
    assert stat.S_IMODE(os.stat(os.path.dirname(db_path)).st_mode) == 0o700
