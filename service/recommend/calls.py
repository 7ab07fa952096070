"""The serving calls as plain functions: recommend, score, fold in, find similar items.

Each takes the `ServingContext` its request read once. Ranking calls become jobs of the next
batch (see `service.recommend.plan`); every call reads the database at most twice: the users'
history markers, and the ratings of users changed since the snapshot that are not cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from service.errors import ConflictError, NotFoundError
from service.ml import ranking
from service.recommend.batcher import run_inline
from service.recommend.context import ServingContext
from service.recommend.plan import CallJob, Profiles, RankJob, ScoreBuffers, rank_batch
from service.recommend.results import (
    FoldIn,
    History,
    Recommendation,
    RecommendOptions,
    Scores,
    Similar,
)
from service.recommend.vectors import (
    Vector,
    fold_in,
    history_vector,
    needs_profile,
    user_vector,
)


async def _batched(context: ServingContext, job: RankJob | CallJob) -> Any:
    """The job's answer from the next batch (computed at once where there is no batcher)."""
    serving = context.serving
    batcher = serving.batcher
    if batcher is None:
        answer = run_inline(await rank_batch([job], serving.profiles, ScoreBuffers()))[0]
    else:
        answer = await batcher.submit(job)
    if isinstance(answer, Exception):
        raise answer
    return answer


def profile_users(context: ServingContext, users: Sequence[str], exclude_rated: bool) -> list[str]:
    """The users whose profiles a call needs from the database (read together)."""
    return [u for u in dict.fromkeys(users) if needs_profile(context, u, exclude_rated)]


async def rank_users(
    context: ServingContext, users: Sequence[str], options: RecommendOptions
) -> list[Recommendation]:
    """Top-n lists for many users (request order): stored embedding, fold-in of the current
    history, or popular; their profiles are read together with those of the concurrent calls
    batched with this one."""

    def vectors(profiles: Profiles) -> list[Vector]:
        return [user_vector(context, user, profiles.get(user)) for user in users]

    job = RankJob(context, profile_users(context, users, options.exclude_rated), vectors, options)
    made, lists = await _batched(context, job)
    version = context.served.version
    return [
        Recommendation(user, version, vector.source, items)
        for user, vector, items in zip(users, made, lists, strict=True)
    ]


async def rank_history(
    context: ServingContext, history: History, options: RecommendOptions
) -> Recommendation:
    """Top-n items for an anonymous history (nothing is stored; its items are excluded)."""
    primary = context.tables.primary

    def vectors(_profiles: Profiles) -> list[Vector]:
        indices = primary.vocabulary.indices(history.items)
        vector = history_vector(primary, indices, history.ratings)
        vector.rated_ids = history.items
        return [vector]

    made, lists = await _batched(context, RankJob(context, (), vectors, options))
    return Recommendation(None, context.served.version, made[0].source, lists[0])


async def score_items(
    context: ServingContext,
    items: Sequence[str],
    *,
    user: str | None = None,
    history: History | None = None,
) -> Scores:
    """Scores of items (request order) for a user or a history; unknown items score None.

    A user or history without a usable vector is scored as a zero vector: the model's item
    biases (for explicit models, the baseline predicted rating). A stored user's ratings are
    not read (only their marker, in `auto` mode).
    """
    reads = () if user is None else profile_users(context, [user], exclude_rated=False)

    def run(profiles: Profiles) -> Scores:
        return _scores(context, items, user, profiles, history)

    scores: Scores = await _batched(context, CallJob(context, reads, run))
    return scores


def _scores(
    context: ServingContext,
    items: Sequence[str],
    user: str | None,
    profiles: Profiles,
    history: History | None,
) -> Scores:
    primary = context.tables.primary
    if user is not None:
        vector = user_vector(context, user, profiles.get(user))
    else:
        assert history is not None
        indices = primary.vocabulary.indices(history.items)
        vector = history_vector(primary, indices, history.ratings)
    index = primary.vocabulary.index
    rows = [index(item) for item in items]
    if None not in rows:  # every item known: the usual call
        found = np.array(rows, dtype=np.int64)
        values = primary.table.score_items(vector.embedding, vector.bias, found)
        every: list[tuple[str, float | None]] = list(zip(items, values, strict=True))
        return Scores(context.served.version, vector.source, every, [])
    wanted = np.array([-1 if row is None else row for row in rows], dtype=np.int64)
    known = wanted >= 0
    values = primary.table.score_items(vector.embedding, vector.bias, wanted[known])
    it = iter(values)
    flags = known.tolist()
    scores = [(item, next(it) if ok else None) for item, ok in zip(items, flags, strict=True)]
    unknown = list(dict.fromkeys(item for item, ok in zip(items, flags, strict=True) if not ok))
    return Scores(context.served.version, vector.source, scores, unknown)


def fold_in_history(context: ServingContext, history: History) -> FoldIn:
    """The embedding and bias a history folds into (a zero vector when nothing is known)."""
    primary = context.tables.primary
    indices = primary.vocabulary.indices(history.items)
    unknown = [
        item for item, index in zip(history.items, indices.tolist(), strict=True) if index < 0
    ]
    with torch.inference_mode():
        vector = fold_in(primary.model, indices, history.ratings)
        if vector is None:
            embedding, bias, has_bias = [0.0] * primary.table.width, 0.0, True
        else:
            embedding = vector.embedding.detach().cpu().tolist()
            bias, has_bias = float(vector.bias), vector.has_bias
    return FoldIn(context.served.version, embedding, bias if has_bias else None, unknown)


def similar_items(context: ServingContext, item: str, n: int) -> Similar:
    """The n items with the most similar factors (cosine) to `item`, itself left out."""
    primary = context.tables.primary
    index = primary.vocabulary.index(item)
    version = context.served.version
    if index is None:
        raise NotFoundError(f"item {item!r} is unknown to model version {version}")
    if primary.table.normalized is None:
        raise ConflictError(
            f"model version {version} ({primary.model.name}) has no item factors to compare"
        )
    found, scores = ranking.similar(primary.table, index, n)
    ids = primary.item_ids
    return Similar(item, version, [(ids[j], s) for j, s in zip(found, scores, strict=True)])
