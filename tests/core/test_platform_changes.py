"""The platform's changes in flight (bridge.core.platform_changes): the fold and the overlay."""

from bridge.core.actions import Device
from bridge.core.platform_changes import DELETE, RENAME, Change, Overlay, fold, mapped


def rename(n, old, new):
    return Change(n, "o:%d" % n, RENAME, old, new)


def delete(n, name):
    return Change(n, "o:%d" % n, DELETE, name)


def test_a_rename_follows_the_device_through_earlier_renames_and_a_delete_ends_it():
    assert fold([rename(1, "A", "B"), rename(2, "B", "C")]) == {"A": "C", "B": "C"}
    assert fold([rename(1, "A", "B"), delete(2, "B")]) == {"A": None, "B": None}
    assert fold([delete(1, "A")]) == {"A": None}


def test_a_rename_back_leaves_the_device_as_it_was_and_a_swap_swaps():
    assert mapped(Device("A", "t"), fold([rename(1, "A", "B"), rename(2, "B", "A")])) \
        == Device("A", "t")
    swap = fold([rename(1, "A", "tmp"), rename(2, "B", "A"), rename(3, "tmp", "B")])
    assert mapped(Device("A", "t"), swap) == Device("B", "t")
    assert mapped(Device("B", "x"), swap) == Device("A", "x")


def test_mapped_keeps_the_type_and_leaves_other_devices_alone():
    names = fold([rename(1, "A", "B"), delete(2, "C")])
    assert mapped(Device("A", "meter"), names) == Device("B", "meter")
    assert mapped(Device("C", "meter"), names) is None
    other = Device("D", "meter")
    assert mapped(other, names) is other


def test_an_applied_change_stays_until_a_load_that_began_after_its_commit():
    overlay = Overlay()
    assert overlay.add(rename(1, "A", "B")) is True
    assert overlay.names == {"A": "B"} and len(overlay) == 1
    names = overlay.names
    overlay.applied([1], committed=10.0)
    assert overlay.names == {"A": "B"} and len(overlay) == 0  # applied, not yet loaded
    assert overlay.to_apply(10) == ()
    assert overlay.loaded(9.5) is False  # a load from before the commit does not show it
    assert overlay.names == {"A": "B"}
    assert overlay.loaded(10.0) is True
    assert overlay.names == {} and overlay.names is names  # one dict, updated in place


def test_changes_another_process_applied_count_as_committed_when_noticed():
    overlay = Overlay()
    overlay.journal([rename(1, "A", "B"), delete(2, "C")], now=1.0)
    assert overlay.to_apply(1) == (rename(1, "A", "B"),)
    assert overlay.journal([delete(2, "C")], now=5.0) is False  # 1 left the journal
    assert overlay.names == {"A": "B", "C": None}
    assert overlay.loaded(4.0) is False
    assert overlay.loaded(6.0) is True
    assert overlay.names == {"C": None} and overlay.to_apply(10) == (delete(2, "C"),)
