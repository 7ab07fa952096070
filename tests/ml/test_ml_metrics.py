"""Metric values checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.ml.data import Interactions, Vocabulary
from service.ml.metrics import (
    evaluate_ranking,
    evaluate_ratings,
    list_metrics,
    mae,
    rmse,
    threshold_scores,
    top_n,
)


def _interactions(pairs: list[tuple[int, int]], values: list[float] | None = None) -> Interactions:
    users, items = zip(*pairs, strict=True)
    return Interactions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        values=None if values is None else np.asarray(values, dtype=np.float32),
        user_ids=Vocabulary(["a", "b", "c"]),
        item_ids=Vocabulary([f"i{i}" for i in range(5)]),
    )


def test_rmse_and_mae() -> None:
    predicted, actual = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])
    assert rmse(predicted, actual) == pytest.approx(math.sqrt(4 / 3))
    assert mae(predicted, actual) == pytest.approx(2 / 3)
    assert math.isnan(rmse(torch.zeros(0), torch.zeros(0)))


def test_threshold_precision_recall_f1() -> None:
    scores = threshold_scores(torch.tensor([4.5, 3.0, 4.2, 2.0]), torch.tensor([5.0, 4, 3, 1]))
    # predicted good: 0 and 2; actually good: 0 and 1; one true positive
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((0.5, 0.5, 0.5))


def test_list_metrics_by_hand() -> None:
    lists = torch.tensor([[3, 1, 7, 2], [4, 0, -1, -1]])
    relevant = torch.tensor([[False, True, False, True], [False, False, False, False]])
    result = list_metrics(lists, relevant, torch.tensor([2, 1]), k=3, patience=0.5)
    # user 0: hit at rank 2 within k=3 (and rank 4 beyond it); two relevant items
    dcg, idcg = 1 / math.log2(3), 1 + 1 / math.log2(3)
    assert float(result["ndcg@3"][0]) == pytest.approx(dcg / idcg)
    assert float(result["recall@3"][0]) == pytest.approx(0.5)
    assert float(result["mrr"][0]) == pytest.approx(0.5)
    assert float(result["rbp"][0]) == pytest.approx(0.5 * (0.5**1 + 0.5**3))
    # user 1: no hit anywhere
    assert [float(result[name][1]) for name in result] == [0.0, 0.0, 0.0, 0.0]


def test_top_n_excludes_training_items_and_pads() -> None:
    train = _interactions([(0, 4), (0, 3), (1, 0)])
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, -torch.inf, 0.2, 0.1]])
    lists = top_n(lambda users: scores[users], torch.tensor([0, 1]), 5, exclude=train)
    assert lists[0].tolist() == [2, 1, 0, -1, -1]
    assert lists[1].tolist() == [1, 3, 4, -1, -1]


def test_evaluate_ranking_end_to_end() -> None:
    train = _interactions([(0, 4), (1, 0), (2, 1)])
    test = _interactions([(0, 2), (0, 0), (1, 4)])
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]).repeat(3, 1)
    result = evaluate_ranking(lambda users: scores[users], train, test, k=2, n=4)
    # user 0 list [3, 2, 1, 0]: hit at rank 2 (item 2) and rank 4 (item 0)
    # user 1 list [4, 3, 2, 1]: hit at rank 1; user 2 has no test items and is skipped
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert result["users"] == 2
    assert result["ndcg@2"] == pytest.approx((ndcg0 + 1.0) / 2)
    assert result["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["mrr"] == pytest.approx((0.5 + 1.0) / 2)


def test_evaluate_ratings() -> None:
    test = _interactions([(0, 1), (1, 2), (2, 3)], [4.0, 2.0, 5.0])
    result = evaluate_ratings(lambda users, items: torch.tensor([3.0, 2.0, 4.0]), test)
    assert result["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert result["mae"] == pytest.approx(2 / 3)
    # predicted ≥ 4: only the third; rated ≥ 4: the first and the third
    assert result["precision@4"] == pytest.approx(1.0)
    assert result["recall@4"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="explicit"):
        evaluate_ratings(lambda u, i: u.float(), _interactions([(0, 1)]))
