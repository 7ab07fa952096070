"""What a model must learn on planted data: the conformance suite's accuracy check.

The data are `grouped_ratings`: users rate mostly their own group's items (so who likes what is
learnable beyond popularity) with ratings from a rank-3 model plus noise (so ratings are
learnable beyond item means). A per-user holdout keeps a fifth of each user's ratings for
measuring. An implicit model must rank the held-out items better than `popular` does (nDCG@10),
an explicit one must predict the held-out ratings better than the item means do (RMSE), each by
a stated margin. `popular` is the baseline itself: it must rank exactly as the training counts
do (on this data it barely beats a random ranking: the groups, not popularity, carry the signal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.ml.base import Recommender
from service.ml.catalog import create_model
from service.ml.data import Interactions
from service.ml.metrics import evaluate_ranking, model_score_fn
from service.ml.splits import Split, user_holdout
from tests.ml.tiny_data import grouped_ratings

NDCG_MARGIN = 0.10
"""An implicit model's nDCG@10 must exceed the baseline's by this much (absolute)."""

RMSE_MARGIN = 0.10
"""An explicit model's RMSE must be below the item means' RMSE times (1 - this)."""


@dataclass(frozen=True)
class Verdict:
    """One accuracy comparison: the model's metric, the baseline's and the limit applied."""

    model: str
    metric: str
    value: float
    baseline_name: str
    baseline: float
    limit: float
    passed: bool

    def __str__(self) -> str:
        relation = ">=" if self.metric.startswith("ndcg") else "<="
        return (
            f"{self.model}: {self.metric} {self.value:.4f} on held-out data, needs {relation} "
            f"{self.limit:.4f} ({self.baseline_name} reaches {self.baseline:.4f})"
        )


def planted_split(seed: int = 11) -> Split:
    """Per-user holdout (a fifth of each user's ratings) of the planted grouped ratings."""
    return user_holdout(grouped_ratings(), test_fraction=0.2, validation_fraction=0.0, seed=seed)


def _ndcg(model: Recommender[Any], split: Split) -> float:
    return evaluate_ranking(model_score_fn(model), split.train, split.test, k=10)["ndcg@10"]


def _counts_ndcg(split: Split) -> float:
    counts = np.bincount(split.train.items, minlength=split.train.n_items).astype(np.float32)
    table = torch.as_tensor(counts).expand(split.train.n_users, -1)
    return evaluate_ranking(lambda users: table[users], split.train, split.test, k=10)["ndcg@10"]


def item_mean_rmse(train: Interactions, test: Interactions) -> float:
    """RMSE of predicting each held-out rating by its item's mean training rating."""
    assert train.values is not None
    assert test.values is not None
    values = train.values.astype(np.float64)
    sums = np.bincount(train.items, weights=values, minlength=train.n_items)
    counts = np.bincount(train.items, minlength=train.n_items)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), values.mean())
    diff = means[test.items] - test.values.astype(np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def model_rmse(model: Recommender[Any], test: Interactions) -> float:
    """RMSE of the model's predicted ratings on held-out rated pairs."""
    assert test.values is not None
    users = torch.as_tensor(test.users)
    items = torch.as_tensor(test.items)
    predicted = model.score_users(users).cpu()[torch.arange(len(users)), items].double()
    diff = predicted - torch.as_tensor(test.values, dtype=torch.float64)
    return float(torch.sqrt(torch.mean(diff * diff)))


def measure(model: Recommender[Any], split: Split) -> Verdict:
    """Compare a model fitted on `split.train` with its baseline on `split.test`."""
    if model.explicit:
        value = model_rmse(model, split.test)
        baseline = item_mean_rmse(split.train, split.test)
        limit = baseline * (1.0 - RMSE_MARGIN)
        return Verdict(model.name, "rmse", value, "item mean", baseline, limit, value <= limit)
    value = _ndcg(model, split)
    if model.name == "popular":
        baseline = _counts_ndcg(split)
        limit = baseline - 1e-9
        passed = value >= limit
        return Verdict(model.name, "ndcg@10", value, "the count ranking", baseline, limit, passed)
    else:
        popular = create_model("popular", {"device": "cpu"})
        popular.fit(split.train)
        name, baseline = "popular", _ndcg(popular, split)
    limit = baseline + NDCG_MARGIN
    return Verdict(model.name, "ndcg@10", value, name, baseline, limit, value >= limit)


def check_accuracy(model: Recommender[Any], split: Split) -> Verdict:
    """`measure`, raising AssertionError (with the figures) when the model does not learn."""
    verdict = measure(model, split)
    if not verdict.passed:
        raise AssertionError(f"learned too little: {verdict}")
    return verdict
