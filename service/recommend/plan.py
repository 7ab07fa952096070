"""The plan of one batch of requests: one profile read for the batch on the event loop, the
users' vectors, then their rows ranked together by `service.ml.ranking` (one matrix product and
one `topk` per item table and block, in the batcher's thread) and the lists built back on the
loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.ml.ranking import (
    NO_ITEMS,
    ItemTable,
    Ranked,
    RankPlan,
    RankRow,
    excluded_indices,
    plan_ranking,
)
from service.recommend.batcher import BatchFunction, BatchPlan
from service.recommend.context import ServingContext
from service.recommend.profiles import ProfileSource
from service.recommend.results import RecommendOptions
from service.recommend.vectors import Vector
from service.registry import ModelView, UserProfile

ROWS_PER_BLOCK_ELEMENTS = 4_000_000
"""A batch is scored in blocks of at most this many (user, item) scores, to bound memory."""

READ_USERS_PER_QUERY = 1000
"""Jobs of a batch share one profile read until it names this many users (a larger job reads
alone: still one read per request)."""

CACHED_BUFFERS = 4
"""Item tables whose score buffers are kept."""

Profiles = Mapping[str, UserProfile]
NO_PROFILES: Profiles = {}

ItemList = list[tuple[str, float]]


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


@dataclass(frozen=True)
class RankJob:
    """A request's ranking work: the users whose profiles it needs, and its vectors (made from
    those profiles once the batch has read them)."""

    context: ServingContext
    reads: Sequence[str]
    vectors: Callable[[Profiles], list[Vector]]
    options: RecommendOptions


@dataclass(frozen=True)
class CallJob:
    """Other work of a request, run after the batch's profile read."""

    context: ServingContext
    reads: Sequence[str]
    run: Callable[[Profiles], Any]


@dataclass(frozen=True)
class _Row:
    """One list to rank: the vector, the model view that scores it, and its options."""

    view: ModelView
    vector: Vector
    options: RecommendOptions

    def rank_row(self) -> RankRow:
        """The row as `service.ml.ranking` takes it (item indices of its view)."""
        options, view = self.options, self.view
        excluded = self.vector.excluded_in(view) if options.exclude_rated else NO_ITEMS
        if options.exclude:
            excluded = excluded_indices(excluded, view.vocabulary.indices(list(options.exclude)))
        return RankRow(
            n=options.n,
            bias=self.vector.bias,
            excluded=excluded,
            allowed=view.allowed(options.tags),
        )


def _rows(
    context: ServingContext, vectors: Sequence[Vector], options: RecommendOptions
) -> list[_Row]:
    """Model and fold-in vectors rank with the primary model, fallback ones with the fallback."""
    tables = context.tables
    return [
        _Row(tables.primary if v.embedding is not None else tables.fallback, v, options)
        for v in vectors
    ]


def _stack(vectors: Sequence[Vector]) -> torch.Tensor:
    embeddings = [v.embedding for v in vectors]
    if len(embeddings) == 1:
        return embeddings[0].unsqueeze(0)  # type: ignore[union-attr]
    return torch.stack(embeddings)  # type: ignore[arg-type]


def rank_rows(
    rows: Sequence[_Row], buffers: ScoreBuffers | None = None
) -> tuple[Callable[[], list[Ranked]], Callable[[list[Ranked]], list[ItemList]]]:
    """Top-n lists of many rows: the work of the batcher's thread (`RankPlan.run` per item
    table and block) and the lists built from its result on the loop."""
    plans: list[tuple[list[int], ModelView, RankPlan]] = []
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((id(row.view.table), row.vector.embedding is None), []).append(i)
    with torch.inference_mode():
        for (_table, popular), members in groups.items():
            view = rows[members[0]].view
            table = view.table
            block = max(1, ROWS_PER_BLOCK_ELEMENTS // max(table.n_items, 1))
            for start in range(0, len(members), block):
                part = members[start : start + block]
                chunk = [rows[i] for i in part]
                plan = plan_ranking(
                    table,
                    None if popular else _stack([r.vector for r in chunk]),
                    [r.rank_row() for r in chunk],
                    None if buffers is None else buffers.get(table, len(chunk)),
                )
                if plan is not None:  # otherwise the rows' lists stay empty
                    plans.append((part, view, plan))

    def work() -> list[Ranked]:
        return [plan.run() for _, _, plan in plans]

    def finish(ranked: list[Ranked]) -> list[ItemList]:
        results: list[ItemList] = [[] for _ in rows]
        for (members, view, plan), result in zip(plans, ranked, strict=True):
            ids = view.item_ids
            for i, (found, scores) in zip(members, plan.lists(result), strict=True):
                results[i] = [(ids[j], s) for j, s in zip(found, scores, strict=True)]
        return results

    return work, finish


async def read_batch_profiles(
    jobs: Sequence[RankJob | CallJob], source: ProfileSource
) -> list[Profiles | Exception]:
    """The profiles each job needs, read in as few reads as `READ_USERS_PER_QUERY` allows
    (jobs of different model versions read apart). A failed read fails the jobs that needed it
    (their answer is the exception)."""
    answers: list[Profiles | Exception] = [NO_PROFILES] * len(jobs)
    groups: list[list[int]] = []
    named = 0
    for i, job in enumerate(jobs):
        if not job.reads:
            continue
        if (
            not groups
            or named + len(job.reads) > READ_USERS_PER_QUERY
            or jobs[groups[-1][0]].context.served is not job.context.served
        ):
            groups.append([])
            named = 0
        groups[-1].append(i)
        named += len(job.reads)
    for group in groups:
        served = jobs[group[0]].context.served
        try:
            found: Profiles | Exception = await source.read(
                [u for i in group for u in jobs[i].reads], served
            )
        except Exception as error:  # the database is away: these requests fail alike
            found = error
        for i in group:
            answers[i] = found
    return answers


async def rank_batch(
    jobs: Sequence[RankJob | CallJob], source: ProfileSource, buffers: ScoreBuffers | None = None
) -> BatchPlan:
    """The plan of many requests' jobs (the batch function): one profile read for the batch and
    the other jobs' calls now, then the ranking jobs' lists, ranked together.

    A job whose read, vectors or call fail gets its exception as its answer; the others still
    run.
    """
    answers: list[Any] = []
    spans: list[tuple[int, int, list[Vector]] | None] = []
    rows: list[_Row] = []
    batch_profiles = await read_batch_profiles(jobs, source)
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
    work, rank_finish = rank_rows(rows, buffers)

    def finish(ranked: list[Ranked]) -> list[Any]:
        lists = rank_finish(ranked)
        for i, span in enumerate(spans):
            if span is not None:
                answers[i] = (span[2], lists[span[0] : span[1]])
        return answers

    return BatchPlan(work, finish)


def batch_function(source: ProfileSource, buffers: ScoreBuffers) -> BatchFunction:
    """The batcher's batch function, reading profiles from `source` (on the event loop)."""

    async def prepare(jobs: Sequence[Any]) -> BatchPlan:
        return await rank_batch(jobs, source, buffers)

    return prepare
