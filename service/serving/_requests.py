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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.db.profiles import UserProfile
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ml.base import Recommender
from service.ml.data import IndexArray, ValueArray
from service.serving._batcher import BatchFunction, BatchPlan, run_inline
from service.serving._runtime import ModelView, ServingContext
from service.serving._tables import ItemTable

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
def _excluded(view: ModelView, vector: _Vector, options: RecommendOptions) -> set[int]:
    """The model indices of the items a list leaves out (the ones the model knows)."""
    left_out: set[int] = set()
    if options.exclude:
        left_out.update(view.table.vocabulary.indices(list(options.exclude)).tolist())
    if options.exclude_rated:
        left_out.update(vector.rated_in(view).tolist())
    left_out.discard(-1)
    return left_out


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


@dataclass(frozen=True)
class _Chunk:
    """Rows of one item table ranked by one matrix product and one `topk`."""

    table: ItemTable
    members: list[int]
    """Positions of the chunk's rows among the batch's rows."""
    embeddings: torch.Tensor | None
    """(rows, factors) user vectors (None: fallback rows, zero vectors)."""
    blocked: list[tuple[int, torch.Tensor]]
    """Per row, the items to score -inf before `topk` (see `_blocked`)."""
    k: int
    """How many items `topk` takes per row."""
    out: torch.Tensor | None
    """A reusable score buffer (see `ScoreBuffers`)."""
    biases: list[float]
    excluded: list[set[int]]
    lengths: list[int]

    def rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`ItemTable.rank` of the chunk (in the batcher's thread)."""
        return self.table.rank(self.embeddings, len(self.members), self.blocked, self.k, self.out)


RankWork = Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]
"""The thread's part of a ranking: `topk` values and indices per chunk."""

RankFinish = Callable[[list[tuple[torch.Tensor, torch.Tensor]]], list[list[tuple[str, float]]]]
"""The loop's part: the thread's result as one top-n list per row."""


def _rank_plan(
    rows: Sequence[_Row], buffers: ScoreBuffers | None = None
) -> tuple[RankWork, RankFinish]:
    """Top-n lists of many rows, split into the work of the batcher's thread (one matmul and
    one topk per item table and block) and the lists built from it on the loop.

    Rows are ranked by raw scores; users' biases and the model's transform, which do not change
    a row's order, are applied to the top n only.
    """
    chunks: list[_Chunk] = []
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((id(row.view.table), row.vector.embedding is None), []).append(i)
    with torch.inference_mode():
        for (_table, popular), members in groups.items():
            table = rows[members[0]].view.table
            block = max(1, ROWS_PER_BLOCK_ELEMENTS // max(table.n_items, 1))
            for start in range(0, len(members), block):
                part = members[start : start + block]
                chunk = [rows[i] for i in part]
                excluded = [_excluded(r.view, r.vector, r.options) for r in chunk]
                wanted = (
                    r.options.n + (0 if len(left) > EXCLUDED_AFTER_TOPK else len(left))
                    for r, left in zip(chunk, excluded, strict=True)
                )
                k = min(max(wanted), table.n_items)
                if k <= 0:
                    continue  # the rows' lists stay empty
                chunks.append(
                    _Chunk(
                        table=table,
                        members=part,
                        embeddings=None if popular else _stack([r.vector for r in chunk]),
                        blocked=_blocked(chunk, excluded, table),
                        k=k,
                        out=None if buffers is None else buffers.get(table, len(chunk)),
                        biases=[r.vector.bias for r in chunk],
                        excluded=excluded,
                        lengths=[r.options.n for r in chunk],
                    )
                )

    def work() -> list[tuple[torch.Tensor, torch.Tensor]]:
        with torch.inference_mode():
            return [chunk.rank() for chunk in chunks]

    def finish(ranked: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[tuple[str, float]]]:
        results: list[list[tuple[str, float]]] = [[] for _ in rows]
        with torch.inference_mode():
            for chunk, (values, indices) in zip(chunks, ranked, strict=True):
                lists = chunk.table.scored_lists(
                    values, indices, chunk.biases, chunk.excluded, chunk.lengths
                )
                for i, items in zip(chunk.members, lists, strict=True):
                    results[i] = items
        return results

    return work, finish


EXCLUDED_AFTER_TOPK = 200
"""A row leaving out at most this many items takes that many more from `topk` and drops them
from its list; a row leaving out more (a long history) masks them before `topk` instead."""


def _blocked(
    chunk: Sequence[_Row], excluded: Sequence[set[int]], table: ItemTable
) -> list[tuple[int, torch.Tensor]]:
    """Per row, the (m,) mask of the items to score -inf before `topk`: those outside its tag
    filter, and its exclusions when they are too many to drop afterwards."""
    blocked = []
    for j, (row, left_out) in enumerate(zip(chunk, excluded, strict=True)):
        mask = None
        if row.options.tags:
            mask = ~row.view.index.allowed(row.options.tags, table.n_items, table.device)
        if len(left_out) > EXCLUDED_AFTER_TOPK:
            if mask is None:
                mask = torch.zeros(table.n_items, dtype=torch.bool, device=table.device)
            mask[torch.tensor(sorted(left_out), device=table.device)] = True
        if mask is not None:
            blocked.append((j, mask))
    return blocked


def _stack(vectors: Sequence[_Vector]) -> torch.Tensor:
    embeddings = [v.embedding for v in vectors]
    if len(embeddings) == 1:
        return embeddings[0].unsqueeze(0)  # type: ignore[union-attr]
    return torch.stack(embeddings)  # type: ignore[arg-type]


Ranked = tuple[list[_Vector], list[list[tuple[str, float]]]]
"""A ranking job's answer: its vectors (sources) and their top-n lists."""

Profiles = Mapping[str, UserProfile]
ProfileRead = Callable[[Sequence[str]], dict[str, UserProfile]]
"""Reads the profiles of users in one query (absent users are left out)."""
ProfileFetch = Callable[[Sequence[str]], Awaitable[dict[str, UserProfile]]]
"""`ProfileRead`, awaited."""

READ_USERS_PER_QUERY = 1000
"""Jobs of a batch share one profile query until it names this many users (a larger job reads
alone: still one query per request)."""


@dataclass(frozen=True)
class RankJob:
    """A request's ranking work for the batcher: the users whose profiles it needs, and its
    vectors (made from those profiles once the batch has read them)."""

    context: ServingContext
    reads: Sequence[str]
    vectors: Callable[[Profiles], list[_Vector]]
    options: RecommendOptions


@dataclass(frozen=True)
class CallJob:
    """Other work of a request for the batcher, run after the batch's profile read."""

    reads: Sequence[str]
    run: Callable[[Profiles], Any]


NO_PROFILES: Profiles = {}


async def read_batch_profiles(
    jobs: Sequence[RankJob | CallJob], read: ProfileFetch
) -> list[Profiles | Exception]:
    """The profiles each job needs, read in as few queries as `READ_USERS_PER_QUERY` allows.

    A failed query fails the jobs that needed it (their answer is the exception).
    """
    answers: list[Profiles | Exception] = [NO_PROFILES] * len(jobs)
    groups: list[list[int]] = []
    named = 0
    for i, job in enumerate(jobs):
        if not job.reads:
            continue
        if not groups or named + len(job.reads) > READ_USERS_PER_QUERY:
            groups.append([])
            named = 0
        groups[-1].append(i)
        named += len(job.reads)
    for group in groups:
        try:
            found: Profiles | Exception = await read([u for i in group for u in jobs[i].reads])
        except Exception as error:  # the database is away: these requests fail alike
            found = error
        for i in group:
            answers[i] = found
    return answers


async def rank_batch(
    jobs: Sequence[RankJob | CallJob],
    read: ProfileFetch,
    buffers: ScoreBuffers | None = None,
) -> BatchPlan:
    """The plan of many requests' jobs (the batch function): one profile read for the batch and
    the other jobs' calls now, then the ranking jobs' lists, ranked together.

    A job whose read, vectors or call fail gets its exception as its answer; the others still
    run.
    """
    answers: list[Any] = []
    spans: list[tuple[int, int, list[_Vector]] | None] = []
    rows: list[_Row] = []
    batch_profiles = await read_batch_profiles(jobs, read)
    with torch.inference_mode():  # no await below: the mode ends before other requests run
        for job, profiles in zip(jobs, batch_profiles, strict=True):
            spans.append(None)
            if isinstance(profiles, Exception):
                answers.append(profiles)
                continue
            try:
                if isinstance(job, CallJob):
                    answers.append(job.run(profiles))
                    continue
                vectors = job.vectors(profiles)
            except Exception as error:  # only this request fails
                answers.append(error)
                continue
            answers.append(None)  # replaced by finish
            spans[-1] = (len(rows), len(rows) + len(vectors), vectors)
            rows.extend(_rows(job.context, vectors, job.options))
    if not rows:
        return BatchPlan(None, lambda _: answers)
    work, rank_finish = _rank_plan(rows, buffers)

    def finish(ranked: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        lists = rank_finish(ranked)
        for i, span in enumerate(spans):
            if span is not None:
                answers[i] = (span[2], lists[span[0] : span[1]])
        return answers

    return BatchPlan(work, finish)


def batch_function(fetch: ProfileFetch, buffers: ScoreBuffers) -> BatchFunction:
    """The batcher's batch function, reading profiles with `fetch` (on the event loop)."""

    async def prepare(jobs: Sequence[Any]) -> BatchPlan:
        return await rank_batch(jobs, fetch, buffers)

    return prepare


def read_inline(read: ProfileRead) -> ProfileFetch:
    """A `ProfileFetch` running a blocking read on the event loop: for SQLite's local reads,
    which cost less than a thread hop (and whose row-by-row GIL releases would each wait for
    the busy loop in a thread)."""

    async def fetch(users: Sequence[str]) -> dict[str, UserProfile]:
        return read(users)

    return fetch


async def _batched(context: ServingContext, job: RankJob | CallJob) -> Any:
    """The job's answer from the next batch (computed at once where there is no batcher)."""
    runtime = context.runtime
    batcher = runtime.batcher
    if batcher is None:
        prepare = batch_function(read_inline(runtime.read_profiles), ScoreBuffers())
        answer = run_inline(await prepare([job]))[0]
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
    context: ServingContext, users: Sequence[str], options: RecommendOptions
) -> list[Recommendation]:
    """Top-n lists for many users (request order): stored embedding, fold-in of the current
    history, or popular; their profiles are read in one query with those of the concurrent
    calls batched with this one."""

    def vectors(profiles: Profiles) -> list[_Vector]:
        return [_user_vector(context, user, profiles.get(user)) for user in users]

    job = RankJob(context, profile_users(context, users, options), vectors, options)
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
    primary = context.primary

    def vectors(_profiles: Profiles) -> list[_Vector]:
        indices = primary.table.vocabulary.indices(history.items)
        vector = _history_vector(primary, indices, history.ratings)
        vector.rated_ids = history.items
        return [vector]

    made, lists = await _batched(context, RankJob(context, (), vectors, options))
    return Recommendation(None, context.served.version, made[0].source, lists[0])


# ----- scores, fold-in, similar items -------------------------------------------------------
async def score_items(
    context: ServingContext,
    items: Sequence[str],
    *,
    user: str | None = None,
    history: History | None = None,
) -> Scores:
    """Scores of items (request order) for a user or a history; unknown items score None.

    A user or history without a usable vector is scored as a zero vector: the model's item
    biases (for explicit models, the baseline predicted rating).
    """
    reads = () if user is None else profile_users(context, [user])

    def run(profiles: Profiles) -> Scores:
        return _scores(context, items, user, profiles, history)

    scores: Scores = await _batched(context, CallJob(reads, run))
    return scores


def _scores(
    context: ServingContext,
    items: Sequence[str],
    user: str | None,
    profiles: Profiles,
    history: History | None,
) -> Scores:
    primary = context.primary
    if user is not None:
        vector = _user_vector(context, user, profiles.get(user))
    else:
        assert history is not None
        indices = primary.table.vocabulary.indices(history.items)
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
