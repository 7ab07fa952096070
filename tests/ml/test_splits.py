"""Seeded holdout splits."""

from __future__ import annotations

import numpy as np
import pytest

from service.ml.data import Interactions, Vocabulary
from service.ml.splits import rating_holdout, user_holdout


def _data(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 40, size=50)
    users = np.repeat(np.arange(50), counts)
    items = np.concatenate([rng.choice(100, size=c, replace=False) for c in counts])
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=rng.integers(1, 6, size=len(users)).astype(np.float32),
        user_ids=Vocabulary([f"u{i}" for i in range(50)]),
        item_ids=Vocabulary([f"i{i}" for i in range(100)]),
    )


def _keys(data: Interactions) -> set[tuple[int, int]]:
    return set(zip(data.users.tolist(), data.items.tolist(), strict=True))


@pytest.mark.parametrize("make", [rating_holdout, user_holdout])
def test_parts_are_disjoint_cover_everything_and_keep_vocabularies(make: object) -> None:
    data = _data()
    split = make(data, seed=3)  # type: ignore[operator]
    parts = [_keys(split.train), _keys(split.validation), _keys(split.test)]
    assert sum(len(p) for p in parts) == len(data)
    assert set().union(*parts) == _keys(data)
    for part in (split.train, split.validation, split.test, split.train_full):
        assert part.user_ids == data.user_ids
        assert part.item_ids == data.item_ids
    assert _keys(split.train_full) == parts[0] | parts[1]
    again = make(data, seed=3)  # type: ignore[operator]
    assert np.array_equal(again.test.users, split.test.users)
    assert np.array_equal(again.test.items, split.test.items)
    other = make(data, seed=4)  # type: ignore[operator]
    assert _keys(other.test) != parts[2]


def test_rating_holdout_sizes() -> None:
    data = _data()
    split = rating_holdout(data, test_fraction=0.1, validation_fraction=0.05, seed=1)
    n_test = round(len(data) * 0.1)
    assert len(split.test) == n_test
    assert len(split.validation) == round((len(data) - n_test) * 0.05)


def test_user_holdout_takes_a_fraction_of_each_user() -> None:
    data = _data()
    split = user_holdout(data, test_fraction=0.2, validation_fraction=0.1, seed=1)
    counts = np.bincount(data.users, minlength=data.n_users)
    test_counts = np.bincount(split.test.users, minlength=data.n_users)
    train_counts = np.bincount(split.train.users, minlength=data.n_users)
    expected = np.minimum(np.round(counts * 0.2), counts - 1)
    assert np.array_equal(test_counts, expected)
    assert (train_counts >= 1).all()


def test_bad_fraction_is_rejected() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        rating_holdout(_data(), test_fraction=1.5)
