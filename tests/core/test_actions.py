"""The core's events and actions are values: immutable, without a ``__dict__``, and equal
only to values of their own type."""

import dataclasses

import pytest

from bridge.core import actions, codes
from bridge.core.actions import Created, Delete, Entry, Publish, Reply, Request, Store

KINDS = [value for value in vars(actions).values()
         if isinstance(value, type) and value.__module__ == actions.__name__
         and (dataclasses.is_dataclass(value) or issubclass(value, tuple))]


def example(kind):
    """A value of ``kind``: its fields filled with a stand-in each."""
    names = kind._fields if issubclass(kind, tuple) else [f.name for f in dataclasses.fields(kind)]
    return kind(*[None] * len(names))


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_event_and_action_is_immutable_and_has_no_dict(kind):
    value = example(kind)
    first = kind._fields[0] if issubclass(kind, tuple) else dataclasses.fields(kind)[0].name
    with pytest.raises(AttributeError):
        setattr(value, first, 1)
    # slots: nothing can be added on the side (a frozen dataclass with slots says so with a
    # TypeError on CPython 3.11: its __setattr__ names the class slots=True replaced)
    with pytest.raises((AttributeError, TypeError)):
        value.anything_else = 1
    assert not hasattr(value, "__dict__")


def test_the_kinds_cover_the_hot_path():
    assert {Request, Reply, Publish, Entry, Store, Created, Delete} <= set(KINDS)


def test_a_value_equals_only_values_of_its_own_type():
    assert Delete((1,)) == Delete((1,)) and hash(Delete((1,))) == hash(Delete((1,)))
    assert Delete((1,)) != Created((1,))  # plain NamedTuples with the same items are equal
    assert not Delete((1,)) == Created((1,))
    assert Reply(1, codes.CREATED) != tuple(Reply(1, codes.CREATED))
    assert [Publish(1, "t", b"x")] != [(1, "t", b"x", "")]
    assert Reply(1, codes.CREATED) != Reply(1, codes.CREATED, authenticated=True)


def test_an_entry_changed_is_a_new_entry():
    entry = Entry(0, "Dev A", "thermo", "v1/gateway/telemetry", b"{}", 1.0)
    stored = entry._replace(id=7)
    assert (entry.id, stored.id, type(stored)) == (0, 7, Entry) and stored != entry
