"""The served ranking (`service.ml.ranking`, through `Recommender.recommend` / `similar_items`)
on every catalog model: exclusions both ways, tag masks, n past the catalog, similar items.

Answers are checked against brute-force scores by value (ties may come in any order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.ml import ranking
from service.ml.base import Recommender
from service.ml.catalog import MODEL_NAMES, create_model
from service.ml.data import Interactions
from tests.ml.test_model_conformance import TINY_CONFIGS
from tests.ml.tiny_data import grouped_ratings

USERS = torch.tensor([0, 3, 5, 7])


@pytest.fixture(scope="module")
def data() -> Interactions:
    return grouped_ratings()


@pytest.fixture(scope="module", params=MODEL_NAMES)
def fitted(request: pytest.FixtureRequest, data: Interactions) -> Recommender[Any]:
    model = create_model(request.param, TINY_CONFIGS[request.param])
    model.fit(data)
    return model


def _expected(
    model: Recommender[Any], row: int, n: int, left_out: set[int], allowed: set[int] | None
) -> list[float]:
    """The best n scores of one user by brute force, leaving items out."""
    scores = model.score_users(USERS[row : row + 1])[0].tolist()
    kept = [
        s for j, s in enumerate(scores) if j not in left_out and (allowed is None or j in allowed)
    ]
    return sorted(kept, reverse=True)[:n]


def _check(
    model: Recommender[Any],
    n: int,
    exclude: list[np.ndarray[Any, Any]],
    allowed: list[set[int] | None],
) -> None:
    embeddings, biases = model.user_parameters(USERS)
    masks = None
    if any(a is not None for a in allowed):
        masks = []
        for a in allowed:
            if a is None:
                masks.append(None)
            else:
                mask = torch.zeros(model.n_items, dtype=torch.bool)
                mask[sorted(a)] = True
                masks.append(mask)
    top, scores = model.recommend(embeddings, biases, n, exclude=exclude, allowed=masks)
    all_scores = model.score_users(USERS)
    for row in range(len(USERS)):
        left_out = set(exclude[row].tolist())
        expected = _expected(model, row, n, left_out, allowed[row])
        found = [j for j in top[row].tolist() if j >= 0]
        assert len(found) == len(expected)
        assert len(set(found)) == len(found)
        assert not set(found) & left_out
        if allowed[row] is not None:
            assert set(found) <= allowed[row]  # type: ignore[operator]
        got = scores[row, : len(found)].tolist()
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            all_scores[row, found].float(), torch.tensor(got), rtol=1e-4, atol=1e-4
        )
        assert bool((scores[row, len(found) :] == -torch.inf).all())


@pytest.mark.parametrize("after_topk", [ranking.EXCLUDED_AFTER_TOPK, 0])
def test_exclusions_dropped_after_topk_or_masked_before(
    fitted: Recommender[Any], monkeypatch: pytest.MonkeyPatch, after_topk: int
) -> None:
    monkeypatch.setattr(ranking, "EXCLUDED_AFTER_TOPK", after_topk)
    exclude = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([2, 2, -1]), np.arange(9)]
    _check(fitted, 5, exclude, [None] * 4)


def test_tag_masks_keep_only_allowed_items(fitted: Recommender[Any]) -> None:
    evens = set(range(0, fitted.n_items, 2))
    thirds = set(range(0, fitted.n_items, 3))
    exclude = [np.array([0]), np.array([], dtype=np.int64), np.array([3, 6]), np.array([1])]
    _check(fitted, 4, exclude, [evens, None, thirds, set()])


def test_n_larger_than_the_catalog_gives_every_item_left(fitted: Recommender[Any]) -> None:
    exclude = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([4]), np.arange(5)]
    _check(fitted, fitted.n_items + 5, exclude, [None] * 4)


def test_similar_items_are_the_closest_by_cosine(fitted: Recommender[Any]) -> None:
    if fitted.embedding_size == 0:
        with pytest.raises(ValueError, match="no item factors"):
            fitted.similar_items(0, 3)
        return
    factors = torch.nn.functional.normalize(fitted.item_parameters().factors.float(), dim=1)
    cosine = (factors @ factors[2]).tolist()
    expected = sorted((s for j, s in enumerate(cosine) if j != 2), reverse=True)
    for n in (3, fitted.n_items + 3):
        items, sims = fitted.similar_items(2, n)
        assert 2 not in items.tolist()
        assert len(items) == min(n, fitted.n_items - 1)
        torch.testing.assert_close(sims, torch.tensor(expected[: len(items)]), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            torch.tensor([cosine[j] for j in items.tolist()]), sims, rtol=1e-4, atol=1e-4
        )
