"""Seeded train/validation/test splits of interactions for offline evaluation.

Two protocols, each carving a validation slice out of the training part:

- `rating_holdout`: a random fraction of all ratings is the test set (rating prediction, 90/10).
- `user_holdout`: a fraction of each user's items is the test set (top-N evaluation, 20%).

Every part keeps the full user and item vocabularies, so one model trained on any part scores the
indices of every other part. Hyper-parameters are chosen by fitting on `train` and measuring on
`validation`; the final model is fitted on `train` (with `validation` for early stopping) or on
`train_full` (models without early stopping), and measured on `test` once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.ml.data import IndexArray, Interactions


@dataclass(frozen=True)
class Split:
    """Disjoint train, validation and test interactions over the same vocabularies."""

    train: Interactions
    """The training part without the validation slice."""
    validation: Interactions
    """Carved from the training part: for choosing hyper-parameters and early stopping."""
    test: Interactions
    """Held out; measured once with the chosen hyper-parameters."""

    @property
    def train_full(self) -> Interactions:
        """The whole training part: `train` and `validation` together."""
        return concat_interactions(self.train, self.validation)


def concat_interactions(first: Interactions, second: Interactions) -> Interactions:
    """Interactions of two parts over the same vocabularies, in order."""
    if first.user_ids != second.user_ids or first.item_ids != second.item_ids:
        raise ValueError("cannot concatenate interactions over different vocabularies")
    if (first.values is None) != (second.values is None):
        raise ValueError("cannot concatenate explicit and implicit interactions")
    values = None
    if first.values is not None and second.values is not None:
        values = np.concatenate([first.values, second.values])
    timestamps = None
    if first.timestamps is not None and second.timestamps is not None:
        timestamps = np.concatenate([first.timestamps, second.timestamps])
    return Interactions(
        users=np.concatenate([first.users, second.users]),
        items=np.concatenate([first.items, second.items]),
        values=values,
        user_ids=first.user_ids,
        item_ids=first.item_ids,
        timestamps=timestamps,
        features=first.features,
    )


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def rating_holdout(
    data: Interactions,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.05,
    seed: int = 42,
) -> Split:
    """Random rating holdout: `test_fraction` of all rows to test, then `validation_fraction`
    of the remaining training rows to validation."""
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    rng = np.random.default_rng(seed)
    n = len(data)
    order = rng.permutation(n)
    n_test = round(n * test_fraction)
    n_validation = round((n - n_test) * validation_fraction)
    part = np.zeros(n, dtype=np.int8)
    part[order[:n_test]] = 2
    part[order[n_test : n_test + n_validation]] = 1
    return _split_by_part(data, part)


def user_holdout(
    data: Interactions,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 42,
) -> Split:
    """Per-user holdout: round(`test_fraction`·n) of each user's n rows to test, then
    round(`validation_fraction`·rest) of each user's remaining rows to validation.

    A user keeps at least one training row whenever it has any.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    rng = np.random.default_rng(seed)
    n = len(data)
    rank = _rank_within_user(data.users, rng.random(n))
    counts = np.bincount(data.users, minlength=data.n_users)
    n_test = np.minimum(np.round(counts * test_fraction), np.maximum(counts - 1, 0))
    rest = counts - n_test
    n_validation = np.minimum(np.round(rest * validation_fraction), np.maximum(rest - 1, 0))
    row_test = n_test[data.users]
    row_validation = n_validation[data.users]
    part = np.zeros(n, dtype=np.int8)
    part[rank < row_test + row_validation] = 1
    part[rank < row_test] = 2
    return _split_by_part(data, part)


def _rank_within_user(users: IndexArray, keys: npt.NDArray[np.float64]) -> IndexArray:
    """Position of each row in a random order of its user's rows (0 = first)."""
    order = np.lexsort((keys, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    within = np.arange(len(users)) - np.repeat(starts, lengths)
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = within
    return rank


def _split_by_part(data: Interactions, part: npt.NDArray[np.int8]) -> Split:
    return Split(
        train=data.subset(part == 0),
        validation=data.subset(part == 1),
        test=data.subset(part == 2),
    )
