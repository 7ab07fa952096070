"""Freezing long-lived objects after a model load, without leaking swapped-out models."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service.registry import freeze_long_lived_objects


class Node:
    """An object in a reference cycle: only the cycle collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_live_objects_are_frozen() -> None:
    gc.unfreeze()
    kept = [Node() for _ in range(100)]
    freeze_long_lived_objects()
    assert gc.get_freeze_count() >= len(kept)


def test_a_swapped_out_cycle_is_reclaimed_by_the_next_freeze() -> None:
    old_model = Node()
    alive = weakref.ref(old_model)
    freeze_long_lived_objects()  # the old model is frozen while served
    del old_model  # swapped out: garbage now, but frozen objects are never collected
    gc.collect()
    assert alive() is not None
    freeze_long_lived_objects()  # the next load unfreezes and collects first
    assert alive() is None
