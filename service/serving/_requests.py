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
from collections.abc import Callable, Mapping, Sequence
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
from service.serving._tables import NEG_INF, ItemTable, apply_masks

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


@dataclass(frozen=True)
class _Row:
    """One list to rank: the vector, the model view that scores it, and its options."""

    view: ModelView
    vector: _Vector
    options: RecommendOptions


def _rows(
    context: ServingContext, vectors: Sequence[_Vector], options: RecommendOptions
) -> list[_Row]:
    """Model and fold-in vectors rank with the primary model, fallback ones with the fallback."""
    return [
        _Row(context.primary if v.embedding is not None else context.fallback, v, options)
        for v in vectors
    ]


class ScoreBuffers:
    """Reusable (rows, items) score buffers per item table, for the one scoring thread."""

    def __init__(self) -> None:
        self._buffers: dict[int, tuple[ItemTable, torch.Tensor]] = {}

    def get(self, table: ItemTable, rows: int) -> torch.Tensor | None:
        """A (rows, m) float32 buffer of the table's device (None on accelerators)."""
        if table.device.type != "cpu":
            return None
        entry = self._buffers.get(id(table))
        if entry is None or entry[0] is not table or entry[1].shape[0] < rows:
            size = 1 << max(0, rows - 1).bit_length()
            entry = (table, torch.empty((size, table.n_items), dtype=torch.float32))
            if len(self._buffers) >= CACHED_BUFFERS:
                self._buffers.clear()
            self._buffers[id(table)] = entry
        return entry[1][:rows]


CACHED_BUFFERS = 4
"""Item tables whose score buffers are kept."""


def _rank_rows(
    rows: Sequence[_Row], buffers: ScoreBuffers | None = None
) -> list[list[tuple[str, float]]]:
    """Top-n lists of many rows: one matmul and one topk per item table (and block)."""
    results: list[list[tuple[str, float]]] = [[] for _ in rows]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((id(row.view.table), row.vector.embedding is None), []).append(i)
    with torch.inference_mode():
        for (_table, popular), members in groups.items():
            table = rows[members[0]].view.table
            block = max(1, ROWS_PER_BLOCK_ELEMENTS // max(table.n_items, 1))
            for start in range(0, len(members), block):
                chunk = [rows[i] for i in members[start : start + block]]
                out = None if buffers is None else buffers.get(table, len(chunk))
                if popular:  # a zero vector scores items by their biases alone
                    scores = table.score(None, [0.0] * len(chunk), out)
                else:
                    embeddings = [r.vector.embedding for r in chunk]
                    stacked = (
                        embeddings[0].unsqueeze(0)  # type: ignore[union-attr]
                        if len(chunk) == 1
                        else torch.stack(embeddings)  # type: ignore[arg-type]
                    )
                    scores = table.score(stacked, [r.vector.bias for r in chunk], out)
                apply_masks(scores, [_excluded(r.view, r.vector, r.options) for r in chunk], None)
                for j, r in enumerate(chunk):
                    if r.options.tags:
                        allowed = r.view.index.allowed(r.options.tags, table.n_items, table.device)
                        scores[j].masked_fill_(~allowed, NEG_INF)
                longest = max(r.options.n for r in chunk)
                for i, items in zip(
                    members[start : start + block], table.top(scores, longest), strict=True
                ):
                    results[i] = items[: rows[i].options.n]
    return results


Ranked = tuple[list[_Vector], list[list[tuple[str, float]]]]
"""A job's answer: its vectors (sources) and their top-n lists."""


@dataclass(frozen=True)
class RankJob:
    """A request's ranking work for the batcher: its vectors (made in the scoring thread)."""

    context: ServingContext
    vectors: Callable[[], list[_Vector]]
    options: RecommendOptions


def rank_batch(
    jobs: Sequence[RankJob], buffers: ScoreBuffers | None = None
) -> list[Ranked | Exception]:
    """Vectors and top-n lists of many requests' jobs, ranked together (the batch function).

    A job whose vectors fail gets its exception as its answer; the others still run.
    """
    answers: list[Ranked | Exception] = []
    spans: list[tuple[int, int, list[_Vector]] | None] = []
    rows: list[_Row] = []
    with torch.inference_mode():
        for job in jobs:
            try:
                vectors = job.vectors()
            except Exception as error:  # only this request fails
                answers.append(error)
                spans.append(None)
                continue
            answers.append(RuntimeError("not ranked"))  # replaced below
            spans.append((len(rows), len(rows) + len(vectors), vectors))
            rows.extend(_rows(job.context, vectors, job.options))
    ranked = _rank_rows(rows, buffers)
    for i, span in enumerate(spans):
        if span is not None:
            answers[i] = (span[2], ranked[span[0] : span[1]])
    return answers


def batch_function(buffers: ScoreBuffers) -> Callable[[Sequence[Any]], list[Any]]:
    """The batcher's compute function, with score buffers owned by its one thread."""

    def compute(jobs: Sequence[Any]) -> list[Any]:
        return list(rank_batch(jobs, buffers))

    return compute


async def _ranked(context: ServingContext, job: RankJob) -> Ranked:
    batcher = context.runtime.batcher
    if batcher is None:  # no scoring thread (tools): rank inline
        answer = rank_batch([job])[0]
    else:
        answer = await batcher.submit(job)
    if isinstance(answer, Exception):
        raise answer
    return answer


def profile_users(
    context: ServingContext, users: Sequence[str], options: RecommendOptions | None = None
) -> list[str]:
    """The users whose profiles a call needs from the database (read in one query)."""
    return [u for u in dict.fromkeys(users) if _needs_profile(context, u, options)]


async def rank_users(
    context: ServingContext,
    users: Sequence[str],
    options: RecommendOptions,
    profiles: Mapping[str, UserProfile],
) -> list[Recommendation]:
    """Top-n lists for many users (request order) from their profiles (`profile_users`): stored
    embedding, fold-in of the current history, or popular; batched with concurrent calls."""

    def vectors() -> list[_Vector]:
        return [_user_vector(context, user, profiles.get(user)) for user in users]

    made, lists = await _ranked(context, RankJob(context, vectors, options))
    version = context.served.version
    return [
        Recommendation(user, version, vector.source, items)
        for user, vector, items in zip(users, made, lists, strict=True)
    ]


async def rank_history(
    context: ServingContext, history: History, options: RecommendOptions
) -> Recommendation:
    """Top-n items for an anonymous history (nothing is stored; its items are excluded)."""
    primary = context.primary

    def vectors() -> list[_Vector]:
        indices = primary.table.vocabulary.indices(history.items)
        vector = _history_vector(primary, indices, history.ratings)
        vector.rated_ids = history.items
        return [vector]

    made, lists = await _ranked(context, RankJob(context, vectors, options))
    return Recommendation(None, context.served.version, made[0].source, lists[0])


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
