"""Garbage-collector settings of the server process (bridge.runtime)."""

import gc
import platform
import weakref

import pytest

from bridge import runtime

cpython_only = pytest.mark.skipif(platform.python_implementation() != "CPython",
                                  reason="PyPy's collector has no thresholds or freezing")


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    if hasattr(gc, "unfreeze"):
        gc.unfreeze()


@cpython_only
def test_tune_gc_raises_only_the_young_threshold(restore_gc):
    gc.set_threshold(700, 10, 10)
    assert runtime.tune_gc() is True
    assert gc.get_threshold() == (runtime.YOUNG_THRESHOLD, 10, 10)


@cpython_only
def test_objects_alive_at_startup_are_frozen_and_startup_garbage_is_collected(restore_gc):
    class Node:
        pass
    cycle = Node()
    cycle.self = cycle  # garbage only the cyclic collector can free
    freed = weakref.ref(cycle)
    del cycle
    alive = [Node() for _ in range(100)]
    before = gc.get_freeze_count()
    runtime.freeze_startup_objects()
    assert freed() is None
    assert gc.get_freeze_count() >= before + len(alive)
    assert not any(obj is alive[0] for obj in gc.get_objects())  # out of every generation


@pytest.mark.skipif(platform.python_implementation() == "CPython", reason="PyPy only")
def test_on_pypy_nothing_is_changed():
    assert runtime.tune_gc() is False
    runtime.freeze_startup_objects()  # harmless
