"""`freeze_startup_heap`: what is alive at start-up leaves the collector's reach, later
garbage does not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_objects_alive_at_start_up_are_frozen(unfrozen: None) -> None:
    startup = [_Node() for _ in range(1000)]
    frozen = freeze_startup_heap()
    assert frozen >= len(startup)
    assert gc.get_freeze_count() == frozen


def test_garbage_made_after_freezing_is_still_collected(unfrozen: None) -> None:
    freeze_startup_heap()
    dead = _cycle()  # unreachable at once, but only the cyclic collector can free it
    assert dead() is not None
    gc.collect()
    assert dead() is None


def test_a_cycle_alive_at_freezing_is_exempt_from_collection(unfrozen: None) -> None:
    keep = _cycle()
    survivor = keep()
    freeze_startup_heap()
    del survivor  # garbage now, but frozen: the collector no longer looks at it
    gc.collect()
    assert keep() is not None
