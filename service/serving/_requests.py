"""The serving calls as plain functions: recommend, score, fold in, find similar items.

Each takes the `ServingContext` built from the model reference its request read once. A user's
vector comes from one of three places (the `source` of the answer):

- "model": the stored embedding, for a user the model was trained on and whose ratings did not
  change since the model's data snapshot (`MFSERVE_USER_EMBEDDINGS=auto`, the default);
- "foldin": the user's current history in the database (or the request's history) folded into
  the model's factor space on the fly;
- "popular": the popularity fallback, when there is no usable history.

Every call reads the database at most once: the users' history markers and rated items in one
indexed query.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.db.profiles import UserProfile
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ml.base import Recommender
from service.ml.data import IndexArray, ValueArray
from service.serving._runtime import ModelView, ServingContext
from service.serving._tables import apply_masks

ROWS_PER_BLOCK_ELEMENTS = 4_000_000
"""A batch is scored in blocks of at most this many (user, item) scores, to bound memory."""


@dataclass(frozen=True)
class RecommendOptions:
    """What to leave out of a recommendation list, and how long it may be."""

    n: int = 10
    exclude_rated: bool = True
    exclude: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class History:
    """A history sent with a request: item ids and ratings (NaN where absent), no duplicates."""

    items: list[str]
    ratings: npt.NDArray[np.float32]

    @classmethod
    def of(cls, entries: Sequence[tuple[str, float | None]]) -> History:
        """Build from (item, rating) pairs; a later entry for an item replaces an earlier one."""
        latest: dict[str, float | None] = {}
        for item, rating in entries:
            latest.pop(item, None)
            latest[item] = rating
        return cls(
            items=list(latest),
            ratings=np.asarray(
                [np.nan if r is None else r for r in latest.values()], dtype=np.float32
            ),
        )


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user (None: anonymous) and where its user vector came from."""

    user: str | None
    model_version: int
    source: str
    items: list[tuple[str, float]]


@dataclass(frozen=True)
class Scores:
    """Scores of requested items in request order (None: unknown item) and the unknown ids."""

    model_version: int
    source: str
    scores: list[tuple[str, float | None]]
    unknown_items: list[str]


@dataclass(frozen=True)
class FoldIn:
    """A history folded into the model's factor space."""

    model_version: int
    embedding: list[float]
    bias: float | None
    unknown_items: list[str]


@dataclass(frozen=True)
class Similar:
    """Items whose factors are closest in cosine to one item."""

    item: str
    model_version: int
    items: list[tuple[str, float]]


@dataclass
class _Vector:
    """One user's vector in the primary model (None: the fallback), and what they rated."""

    source: str
    embedding: torch.Tensor | None = None
    bias: float = 0.0
    rated_db: npt.NDArray[np.int64] | None = None
    """Database ids of the items the user rated (users read from the database)."""
    rated_ids: list[str] | None = field(default=None)
    """External ids of the items of a request's history (anonymous calls)."""

    def rated_in(self, view: ModelView) -> IndexArray:
        """The rated items as indices of one model (-1 for items it does not know)."""
        if self.rated_ids is not None:
            return view.table.vocabulary.indices(self.rated_ids)
        if self.rated_db is not None:
            return view.index.model_indices(self.rated_db)
        return np.zeros(0, dtype=np.int64)


# ----- user vectors -------------------------------------------------------------------------
def _fold_in(model: Recommender[Any], indices: IndexArray, ratings: ValueArray) -> Any:
    """The model's fold-in of a history, or None when nothing in it is usable."""
    known = indices >= 0
    if not known.any():
        return None
    items, values = indices[known], ratings[known]
    rated = ~np.isnan(values)
    try:
        if model.explicit and rated.any():
            return model.fold_in(items[rated], values[rated])
        return model.fold_in(items, values if rated.all() else None)
    except ValueError:  # e.g. an explicit model given a history without ratings
        return None


def _stored_index(context: ServingContext, user: str, profile: UserProfile | None) -> int | None:
    """The user's row in the model when its stored embedding may be used, else None."""
    served = context.served
    index = served.model.user_ids.index(user)
    mode = context.settings.user_embeddings
    if index is None or mode == "foldin":
        return None
    if mode == "stored":
        return index
    snapshot = served.snapshot
    if snapshot is None:  # no record of what the model saw: trust the embedding
        return index
    seen = snapshot.history_versions.get(user)
    return index if profile is not None and seen == profile.history_version else None


def _needs_profile(context: ServingContext, user: str, options: RecommendOptions | None) -> bool:
    if options is not None and options.exclude_rated:
        return True
    mode = context.settings.user_embeddings
    return not (mode == "stored" and context.served.model.user_ids.index(user) is not None)


def _user_vector(context: ServingContext, user: str, profile: UserProfile | None) -> _Vector:
    primary = context.primary
    rated_db = profile.item_ids if profile is not None else np.zeros(0, dtype=np.int64)
    stored = _stored_index(context, user, profile)
    if stored is not None:
        embedding, bias = primary.table.user_vector(stored)
        return _Vector("model", embedding, bias, rated_db=rated_db)
    if profile is None:
        return _Vector("popular", rated_db=rated_db)
    vector = _history_vector(primary, primary.index.model_indices(rated_db), profile.ratings)
    vector.rated_db = rated_db
    return vector


def _history_vector(primary: ModelView, indices: IndexArray, ratings: ValueArray) -> _Vector:
    folded = _fold_in(primary.model, indices, ratings)
    if folded is None:
        return _Vector("popular")
    embedding = folded.embedding.to(device=primary.table.device, dtype=torch.float32)
    return _Vector("foldin", embedding, float(folded.bias))


# ----- ranking ------------------------------------------------------------------------------
def _excluded(view: ModelView, vector: _Vector, options: RecommendOptions) -> IndexArray:
    parts = [view.table.vocabulary.indices(list(options.exclude))] if options.exclude else []
    if options.exclude_rated:
        parts.append(vector.rated_in(view))
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)


def _rank(
    view: ModelView, vectors: list[_Vector], options: RecommendOptions
) -> list[list[tuple[str, float]]]:
    """Top-n lists of vectors scored by one model: one matmul and one topk per block."""
    table = view.table
    allowed = (
        view.index.allowed(options.tags, table.n_items, table.device) if options.tags else None
    )
    block = max(1, ROWS_PER_BLOCK_ELEMENTS // max(table.n_items, 1))
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(vectors), block):
        chunk = vectors[start : start + block]
        embeddings = [v.embedding for v in chunk if v.embedding is not None]
        if len(embeddings) == len(chunk):
            stacked = embeddings[0].unsqueeze(0) if len(chunk) == 1 else torch.stack(embeddings)
            scores = table.score(stacked, [v.bias for v in chunk])
        else:  # fallback rows: a zero vector scores items by their biases alone
            scores = table.score(None, [0.0] * len(chunk))
        apply_masks(scores, [_excluded(view, v, options) for v in chunk], allowed)
        results.extend(table.top(scores, options.n))
    return results


def _rank_all(
    context: ServingContext, vectors: list[_Vector], options: RecommendOptions
) -> list[list[tuple[str, float]]]:
    """Rank every vector: model and fold-in vectors together, fallback ones together."""
    lists: list[list[tuple[str, float]]] = [[] for _ in vectors]
    model_rows = [i for i, v in enumerate(vectors) if v.embedding is not None]
    popular_rows = [i for i, v in enumerate(vectors) if v.embedding is None]
    with torch.inference_mode():
        for rows, view in ((model_rows, context.primary), (popular_rows, context.fallback)):
            if rows:
                ranked = _rank(view, [vectors[i] for i in rows], options)
                for i, items in zip(rows, ranked, strict=True):
                    lists[i] = items
    return lists


def profile_users(
    context: ServingContext, users: Sequence[str], options: RecommendOptions | None = None
) -> list[str]:
    """The users whose profiles a call needs from the database (read in one query)."""
    return [u for u in dict.fromkeys(users) if _needs_profile(context, u, options)]


def recommend_for_users(
    context: ServingContext,
    users: Sequence[str],
    options: RecommendOptions,
    profiles: Mapping[str, UserProfile],
) -> list[Recommendation]:
    """Top-n lists for many users (in request order) from their profiles (`profile_users`)."""
    with torch.inference_mode():
        vectors = [_user_vector(context, user, profiles.get(user)) for user in users]
    lists = _rank_all(context, vectors, options)
    version = context.served.version
    return [
        Recommendation(user, version, vector.source, items)
        for user, vector, items in zip(users, vectors, lists, strict=True)
    ]


def recommend_for_user(
    context: ServingContext,
    user: str,
    options: RecommendOptions,
    profiles: Mapping[str, UserProfile],
) -> Recommendation:
    """Top-n items for one user: stored embedding, fold-in of the current history, or popular."""
    return recommend_for_users(context, [user], options, profiles)[0]


def recommend_for_history(
    context: ServingContext, history: History, options: RecommendOptions
) -> Recommendation:
    """Top-n items for an anonymous history (nothing is stored; its items are excluded)."""
    primary = context.primary
    indices = primary.table.vocabulary.indices(history.items)
    with torch.inference_mode():
        vector = _history_vector(primary, indices, history.ratings)
    vector.rated_ids = history.items
    items = _rank_all(context, [vector], options)[0]
    return Recommendation(None, context.served.version, vector.source, items)


# ----- scores, fold-in, similar items -------------------------------------------------------
def score_items(
    context: ServingContext,
    items: Sequence[str],
    *,
    user: str | None = None,
    profiles: Mapping[str, UserProfile] | None = None,
    history: History | None = None,
) -> Scores:
    """Scores of items (request order) for a user or a history; unknown items score None.

    A user or history without a usable vector is scored as a zero vector: the model's item
    biases (for explicit models, the baseline predicted rating).
    """
    primary = context.primary
    if user is not None:
        profile = None if profiles is None else profiles.get(user)
        with torch.inference_mode():
            vector = _user_vector(context, user, profile)
    else:
        assert history is not None
        indices = primary.table.vocabulary.indices(history.items)
        with torch.inference_mode():
            vector = _history_vector(primary, indices, history.ratings)
    table = primary.table
    wanted = table.vocabulary.indices(list(items))
    known = wanted >= 0
    with torch.inference_mode():
        embedding = (
            vector.embedding
            if vector.embedding is not None
            else torch.zeros(table.width, device=table.device)
        )
        bias = vector.bias if vector.embedding is not None else 0.0
        values = table.score_items(
            embedding, bias, torch.as_tensor(wanted[known], device=table.device)
        ).tolist()
    it = iter(values)
    scores = [
        (item, next(it) if ok else None) for item, ok in zip(items, known.tolist(), strict=True)
    ]
    unknown = list(
        dict.fromkeys(item for item, ok in zip(items, known.tolist(), strict=True) if not ok)
    )
    return Scores(context.served.version, vector.source, scores, unknown)


def fold_in_history(context: ServingContext, history: History) -> FoldIn:
    """The embedding and bias a history folds into (a zero vector when nothing is known)."""
    model = context.primary.model
    indices = model.item_ids.indices(history.items)
    unknown = [
        item for item, index in zip(history.items, indices.tolist(), strict=True) if index < 0
    ]
    with torch.inference_mode():
        vector = _fold_in(model, indices, history.ratings)
        if vector is None:
            width = context.primary.table.width
            embedding, bias, has_bias = [0.0] * width, 0.0, True
        else:
            embedding = vector.embedding.detach().cpu().tolist()
            bias, has_bias = float(vector.bias), vector.has_bias
    return FoldIn(context.served.version, embedding, bias if has_bias else None, unknown)


def similar_items(context: ServingContext, item: str, n: int) -> Similar:
    """The n items with the most similar factors (cosine) to `item`, itself left out."""
    table = context.primary.table
    index = table.vocabulary.index(item)
    if index is None:
        raise NotFoundError(f"item {item!r} is unknown to model version {context.served.version}")
    if table.normalized is None:
        raise ConflictError(
            f"model version {context.served.version} ({table.name}) has no item factors to compare"
        )
    with torch.inference_mode():
        assert table.normalized_t is not None
        sims = table.normalized[index].unsqueeze(0) @ table.normalized_t
        sims[0, index] = float("-inf")
        items = table.top(sims, n)[0]
    return Similar(item, context.served.version, items)


# ----- input checks -------------------------------------------------------------------------
def check_n(n: int, limit: int, field_name: str) -> None:
    """Refuse an `n` outside 1..limit, naming the field."""
    if not 1 <= n <= limit:
        raise InvalidInputError(
            [
                {
                    "field": field_name,
                    "message": f"must be between 1 and {limit} (MFSERVE_MAX_RECOMMENDATIONS)",
                }
            ]
        )


def read_history(
    entries: Sequence[tuple[str, float | None]], low: float, high: float, field_name: str
) -> History:
    """A request's history, refusing ratings off the scale (naming each entry's field)."""
    bad = [
        {"field": f"{field_name}.{i}.rating", "message": f"must be between {low} and {high}"}
        for i, (_item, rating) in enumerate(entries)
        if rating is not None and not (math.isfinite(rating) and low <= rating <= high)
    ]
    if bad:
        raise InvalidInputError(bad)
    return History.of(entries)
