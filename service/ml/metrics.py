"""Offline accuracy metrics shared by every system (ours and the peers in the benchmark).

Rating prediction: RMSE, MAE, and precision / recall / F1 of "predicted ≥ threshold" against
"rated ≥ threshold" over the test pairs. Top-N: nDCG@k, Recall@k, MRR and RBP over lists that
exclude each user's training items, averaged over the users with at least one test item. Relevance
is binary: every test interaction of a user is relevant.

Anything that scores can be evaluated: a `ScoreFn` maps a batch of user indices to scores over all
items, a `PredictFn` maps (user, item) index pairs to predicted ratings. `model_score_fn` and
`model_predict_fn` adapt a `Recommender`; a peer library adapts its own model the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.ml.base import Recommender
from service.ml.data import Interactions

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""User indices (B,) → scores (B, n_items); higher is better; -inf marks an item never to list."""

PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""User indices (P,) and item indices (P,) → predicted ratings (P,)."""

RANKING_K = 10
"""The cut-off of the top-N metrics (nDCG@10, Recall@10) in training reports and offline runs."""

DEFAULT_RBP_PATIENCE = 0.85


# ----- rating prediction ------------------------------------------------------------------------
def rmse(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """Root mean squared error."""
    diff = predicted.double() - actual.double()
    return math.sqrt(float((diff * diff).mean())) if diff.numel() else math.nan


def mae(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """Mean absolute error."""
    diff = predicted.double() - actual.double()
    return float(diff.abs().mean()) if diff.numel() else math.nan


@dataclass(frozen=True)
class ThresholdScores:
    """Precision, recall and F1 of "predicted ≥ t" as a classifier of "rated ≥ t"."""

    precision: float
    recall: float
    f1: float


def threshold_scores(
    predicted: torch.Tensor, actual: torch.Tensor, threshold: float = 4.0
) -> ThresholdScores:
    """Precision, recall and F1 at a rating threshold over prediction/rating pairs (micro)."""
    predicted_good = predicted >= threshold
    actually_good = actual >= threshold
    true_positive = float((predicted_good & actually_good).sum())
    n_predicted, n_actual = float(predicted_good.sum()), float(actually_good.sum())
    precision = true_positive / n_predicted if n_predicted else 0.0
    recall = true_positive / n_actual if n_actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ThresholdScores(precision=precision, recall=recall, f1=f1)


def model_predict_fn(model: Recommender[Any]) -> PredictFn:
    """Predicted ratings of (user, item) index pairs from a recommender's factor form."""

    @torch.inference_mode()
    def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = users.to(model.device), items.to(model.device)
        embeddings, user_bias = model.user_parameters(users)
        params = model.item_parameters()
        factors = params.factors[items]
        raw = (embeddings.to(factors.dtype) * factors).sum(dim=1)
        raw += user_bias.to(factors.dtype) + params.bias[items] + params.global_bias
        return model.transform_scores(raw)

    return predict


def evaluate_ratings(
    predict: PredictFn,
    test: Interactions,
    threshold: float = 4.0,
    batch_size: int = 65536,
) -> dict[str, float]:
    """RMSE, MAE and precision/recall/F1 at `threshold` of predictions on explicit test ratings."""
    if test.values is None:
        raise ValueError("rating metrics need explicit test ratings")
    users = torch.as_tensor(test.users)
    items = torch.as_tensor(test.items)
    parts = [
        predict(users[i : i + batch_size], items[i : i + batch_size]).detach().float().cpu()
        for i in range(0, len(test), batch_size)
    ]
    predicted = torch.cat(parts) if parts else torch.zeros(0)
    actual = torch.as_tensor(test.values)
    classes = threshold_scores(predicted, actual, threshold)
    return {
        "rmse": rmse(predicted, actual),
        "mae": mae(predicted, actual),
        f"precision@{threshold:g}": classes.precision,
        f"recall@{threshold:g}": classes.recall,
        f"f1@{threshold:g}": classes.f1,
    }


# ----- top-N ------------------------------------------------------------------------------------
def model_score_fn(model: Recommender[Any]) -> ScoreFn:
    """Scores of trained users over all items from a recommender."""

    def score(users: torch.Tensor) -> torch.Tensor:
        return model.score_users(users)

    return score


def _dense_rows(data: Interactions, users: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A boolean (B, n_items) mask of each listed user's items in `data`."""
    csr = data.user_csr()
    user_np = users.cpu().numpy()
    starts, ends = csr.indptr[user_np], csr.indptr[user_np + 1]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(user_np)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = csr.indices[np.repeat(starts, lengths) + offsets]
    mask = torch.zeros((len(user_np), data.n_items), dtype=torch.bool, device=device)
    mask[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = True
    return mask


def top_n(
    score: ScoreFn,
    users: torch.Tensor,
    n: int,
    exclude: Interactions | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Top-n item indices (U, n) per user, without the user's items in `exclude`.

    Positions after the last scorable item (all others excluded or -inf) hold -1.
    """
    lists = []
    for start in range(0, users.shape[0], batch_size):
        batch = users[start : start + batch_size]
        scores = score(batch).float().clone()
        if exclude is not None:
            scores[_dense_rows(exclude, batch, scores.device)] = -torch.inf
        k = min(n, scores.shape[1])
        top = torch.topk(scores, k, dim=1)
        indices = torch.where(torch.isneginf(top.values), -1, top.indices)
        if k < n:
            indices = torch.nn.functional.pad(indices, (0, n - k), value=-1)
        lists.append(indices.cpu())
    return torch.cat(lists) if lists else torch.zeros((0, n), dtype=torch.int64)


def list_metrics(
    lists: torch.Tensor,
    relevant: torch.Tensor,
    n_relevant: torch.Tensor,
    k: int = RANKING_K,
    patience: float = DEFAULT_RBP_PATIENCE,
) -> dict[str, torch.Tensor]:
    """Per-user nDCG@k, Recall@k, MRR (whole list) and RBP (whole list) from hit flags.

    `lists` (U, n) are item indices (-1 padding), `relevant` (U, n) whether each listed item is
    relevant, `n_relevant` (U,) how many relevant items each user has in total.
    """
    hits = relevant & (lists >= 0)
    positions = torch.arange(hits.shape[1], dtype=torch.float64)
    discount = 1.0 / torch.log2(positions + 2.0)
    hits_k = hits[:, :k].double()
    dcg = (hits_k * discount[:k]).sum(dim=1)
    ideal_count = torch.clamp(n_relevant, max=k)
    ideal_cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(discount[:k], 0)])
    if ideal_cum.shape[0] <= k:  # lists shorter than k: the ideal still counts k positions
        extra = 1.0 / torch.log2(torch.arange(ideal_cum.shape[0] - 1, k, dtype=torch.float64) + 2)
        ideal_cum = torch.cat([ideal_cum, ideal_cum[-1] + torch.cumsum(extra, 0)])
    idcg = ideal_cum[ideal_count]
    n_rel = n_relevant.double()
    first = torch.where(hits.any(dim=1), hits.double().argmax(dim=1).double(), torch.inf)
    return {
        f"ndcg@{k}": torch.where(idcg > 0, dcg / idcg, 0.0),
        f"recall@{k}": torch.where(n_rel > 0, hits_k.sum(dim=1) / n_rel, 0.0),
        "mrr": 1.0 / (first + 1.0),
        "rbp": (1 - patience) * (hits.double() * patience**positions).sum(dim=1),
    }


def evaluate_ranking(
    score: ScoreFn,
    train: Interactions,
    test: Interactions,
    k: int = RANKING_K,
    n: int = 100,
    patience: float = DEFAULT_RBP_PATIENCE,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean nDCG@k, Recall@k, MRR and RBP over test users; lists of n exclude training items."""
    test_counts = torch.as_tensor(test.user_csr().counts())
    users = torch.nonzero(test_counts > 0).flatten()
    totals: dict[str, float] = {}
    for start in range(0, users.shape[0], batch_size):
        batch = users[start : start + batch_size]
        lists = top_n(score, batch, n, exclude=train, batch_size=batch_size)
        truth = _dense_rows(test, batch, torch.device("cpu"))
        relevant = truth.gather(1, lists.clamp(min=0))
        per_user = list_metrics(lists, relevant, test_counts[batch], k=k, patience=patience)
        for name, values in per_user.items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
    count = int(users.shape[0])
    result = {name: total / count for name, total in totals.items()} if count else {}
    result["users"] = float(count)
    return result


def evaluate_model(
    model: Recommender[Any],
    train: Interactions,
    test: Interactions,
    k: int = RANKING_K,
    n: int = 100,
    threshold: float = 4.0,
) -> dict[str, float]:
    """Every applicable metric of a fitted recommender: top-N always, rating metrics when the
    model predicts ratings and the test set has them."""
    result = evaluate_ranking(model_score_fn(model), train, test, k=k, n=n)
    if model.explicit and test.values is not None:
        result.update(evaluate_ratings(model_predict_fn(model), test, threshold=threshold))
    return result
