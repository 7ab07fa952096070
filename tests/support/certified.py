"""What the API must answer, computed offline from a model artifact with the certified methods.

Every expected list comes from `Recommender.recommend` (the method the conformance suite
certifies) of the artifact's model or its popularity fallback; scores from `score_users` /
`score_user_vector`, fold-ins from `fold_in`, neighbours from `similar_items`. Nothing here
knows how the API ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.ml.base import Recommender, UserVector

SCORE_TOLERANCE = 1e-5
"""Largest difference allowed between a served score and the certified one."""

TIE = 1e-6
"""Certified scores closer than this are ties: their order in a list is not defined."""


@dataclass(frozen=True)
class Offline:
    """An artifact's models loaded offline: the trained one and the fallback for cold users."""

    model: Recommender[Any]
    fallback: Recommender[Any]


@dataclass(frozen=True)
class Certified:
    """A certified list: where the vector came from and every allowed item, best first."""

    source: str
    ranked: list[tuple[str, float]]


def user_vector(model: Recommender[Any], user: str) -> tuple[torch.Tensor, float]:
    """A trained user's stored embedding and bias."""
    index = model.user_ids.index(user)
    assert index is not None, f"{user!r} is not a trained user of {model.name}"
    embeddings, biases = model.user_parameters(torch.tensor([index]))
    return embeddings[0], float(biases[0])


def fold_in(
    model: Recommender[Any], history: Sequence[tuple[str, float | None]]
) -> UserVector | None:
    """The model's fold-in of a history (items it does not know dropped), or None when nothing in
    it is usable: the documented meaning of a history, where an entry without a rating is an
    implicit interaction. Explicit models fold in the rated entries (and refuse a history
    without any); implicit ones take the ratings only when every entry has one."""
    indices = model.item_ids.indices([item for item, _ in history])
    known = indices >= 0
    if not known.any():
        return None
    ratings = np.asarray([np.nan if r is None else r for _, r in history], dtype=np.float32)
    items, values = indices[known], ratings[known]
    rated = ~np.isnan(values)
    try:
        if model.explicit and rated.any():
            return model.fold_in(items[rated], values[rated])
        return model.fold_in(items, values if rated.all() else None)
    except ValueError:  # an explicit model given only unrated entries
        return None


def ranked(
    model: Recommender[Any],
    embedding: torch.Tensor,
    bias: float,
    *,
    excluded: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
) -> list[tuple[str, float]]:
    """Every item `recommend` ranks for this vector, best first, without the excluded items
    and (when `allowed` is given) those outside it."""
    out = set(excluded)
    if allowed is not None:
        keep = set(allowed)
        out |= {item for item in model.item_ids.ids if item not in keep}
    indices = model.item_ids.indices(sorted(out))
    exclude = [indices[indices >= 0]]
    top, values = model.recommend(
        embedding.reshape(1, -1), torch.tensor([bias]), model.n_items, exclude=exclude
    )
    return [
        (model.item_ids.id_of(int(i)), float(v))
        for i, v in zip(top[0].tolist(), values[0].tolist(), strict=True)
        if v != float("-inf")
    ]


def certified_list(
    offline: Offline,
    *,
    trained_user: str | None = None,
    history: Sequence[tuple[str, float | None]] | None = None,
    excluded: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
) -> Certified:
    """The certified ranking of a trained user's stored vector, else of a history's fold-in,
    else (no usable history) of the fallback."""
    model = offline.model
    if trained_user is not None:
        embedding, bias = user_vector(model, trained_user)
        items = ranked(model, embedding, bias, excluded=excluded, allowed=allowed)
        return Certified("model", items)
    vector = fold_in(model, history or [])
    if vector is not None:
        items = ranked(model, vector.embedding, vector.bias, excluded=excluded, allowed=allowed)
        return Certified("foldin", items)
    fallback = offline.fallback
    empty = torch.zeros(fallback.embedding_size)
    return Certified("popular", ranked(fallback, empty, 0.0, excluded=excluded, allowed=allowed))


def assert_same_ranking(served: Sequence[Mapping[str, Any]], certified: Certified, n: int) -> None:
    """The served list is the certified one cut at n: same length, same scores in order (within
    SCORE_TOLERANCE), the same items wherever the certified scores are not tied."""
    expected = certified.ranked[:n]
    items = [entry["item"] for entry in served]
    scores = [float(entry["score"]) for entry in served]
    context = f"served {list(zip(items, scores, strict=True))}\ncertified {expected}"
    assert len(served) == len(expected), context
    np.testing.assert_allclose(
        scores, [s for _, s in expected], rtol=0, atol=SCORE_TOLERANCE, err_msg=context
    )
    full = certified.ranked
    for position, (item, score) in enumerate(expected):
        tied = {other for other, value in full if abs(value - score) <= TIE}
        if len(tied) == 1:
            assert items[position] == item, (position, context)
        else:
            assert items[position] in tied, (position, context)
    assert len(set(items)) == len(items), context
