"""Ranking in the shared factor form: the one copy of the math that orders items for users.

`Recommender.recommend` / `similar_items` and the API's batches both rank through this module,
so the conformance suite that tests the former tests what is served.

An `ItemTable` holds a model's item side on a device, ready for many rankings. A batch of user
vectors is scored by one matrix product (`addmm` over the item offsets); the excluded items of
every row are set to -inf together (one scatter for the batch) and tag filters are masks, before
one `topk` of the longest list; very short exclusion lists are instead dropped from each row's
top `n + excluded` afterwards. Users' biases and the model's score transform, which do not change
a row's order, are applied to the top n only. `RankPlan` splits this into `run` (the matrix
product, the scatter and `topk`, which release the GIL and may run in another thread) and
`lists`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from service.ml.data import IndexArray

if TYPE_CHECKING:
    from service.ml.base import ItemParameters, Recommender

NEG_INF = float("-inf")

EXCLUDED_AFTER_TOPK = 16
"""A row leaving out at most this many items takes that many more from `topk` and drops them
from its list; a row leaving out more is scattered -inf before `topk` instead (a `topk` of
n + excluded costs more than the scatter once the list is longer than a few items)."""

NO_ITEMS: IndexArray = np.zeros(0, dtype=np.int64)
NOTHING_DROPPED: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ItemTable:
    """One model's item parameters on a device, ready for matmul + topk."""

    factors: torch.Tensor
    """(m, k) item factors."""
    factors_t: torch.Tensor
    """(k, m) item factors, contiguous: a row-vector product over it is the fastest layout."""
    offsets: torch.Tensor
    """(m,) item bias plus global bias: the score of a zero user vector before the transform."""
    normalized: torch.Tensor | None
    """(m, k) unit-length factors for cosine similarity (None without factors)."""
    normalized_t: torch.Tensor | None
    """(k, m) the same, contiguous."""
    transform: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    host: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = field(
        init=False, repr=False, compare=False
    )
    """`factors` and `offsets` as numpy arrays on the same memory (None off the host)."""

    def __post_init__(self) -> None:
        on_host = self.device.type == "cpu"
        host = (self.factors.numpy(), self.offsets.numpy()) if on_host else None
        object.__setattr__(self, "host", host)

    @classmethod
    def build(cls, model: Recommender[Any], device: torch.device | None = None) -> ItemTable:
        """Copy a model's item side to `device` (the model's own by default)."""
        target = model.device if device is None else device
        with torch.inference_mode():
            params = model.item_parameters()
        return cls.of_parameters(params, model.transform_scores, target)

    @classmethod
    def of_parameters(
        cls,
        params: ItemParameters,
        transform: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> ItemTable:
        """Copy item parameters (a model's, or more rows than it was trained on) to `device`."""
        target = device
        with torch.inference_mode():
            factors = params.factors.detach().to(device=target, dtype=torch.float32).contiguous()
            offsets = (
                params.bias.detach().to(device=target, dtype=torch.float32) + params.global_bias
            ).contiguous()
            normalized = (
                torch.nn.functional.normalize(factors, dim=1).contiguous()
                if factors.shape[1] > 0
                else None
            )
        return cls(
            factors=factors,
            factors_t=factors.T.contiguous(),
            offsets=offsets,
            normalized=normalized,
            normalized_t=None if normalized is None else normalized.T.contiguous(),
            transform=transform,
            device=target,
        )

    @property
    def n_items(self) -> int:
        """Number of items the model knows."""
        return int(self.offsets.shape[0])

    @property
    def width(self) -> int:
        """Number of factors."""
        return int(self.factors.shape[1])

    def score_items(
        self, embedding: torch.Tensor | None, bias: float, items: IndexArray
    ) -> list[float]:
        """Scores of one user vector (None: the zero vector, whose bias is ignored) over given
        item indices (none negative)."""
        if embedding is None:
            bias = 0.0
        if self.host is not None:  # a few rows: numpy costs a fraction of torch's calls
            factors, offsets = self.host
            raw = offsets.take(items) + np.float32(bias)
            if embedding is not None and self.width:
                vector = embedding.detach().numpy().astype(np.float32, copy=False)
                raw += factors.take(items, axis=0) @ vector
            scores = torch.from_numpy(raw)
        else:
            index = torch.as_tensor(items, device=self.device)
            with torch.inference_mode():
                scores = self.offsets[index] + bias
                if embedding is not None and self.width:
                    scores += self.factors[index] @ embedding.to(self.factors.dtype)
        return self.transform(scores).tolist()

    def raw_scores(
        self, embeddings: torch.Tensor | None, rows: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw scores (rows, m) of user vectors (rows, k) over every item (None: zero vectors),
        without the users' biases and before the transform (neither changes a row's order)."""
        if embeddings is None or self.width == 0:
            if out is None:
                return self.offsets.unsqueeze(0).repeat(rows, 1)
            return out.copy_(self.offsets.unsqueeze(0).expand(rows, -1))
        vectors = embeddings
        if vectors.dtype != self.factors_t.dtype or vectors.device != self.device:
            vectors = vectors.to(device=self.device, dtype=self.factors_t.dtype)
        if out is None:
            return torch.addmm(self.offsets, vectors, self.factors_t)
        return torch.addmm(self.offsets, vectors, self.factors_t, out=out)

    def allowed(self, tag_items: Sequence[IndexArray]) -> torch.Tensor:
        """A (m,) mask of the items found in every one of the given index sets (a tag filter)."""
        mask = torch.ones(self.n_items, dtype=torch.bool, device=self.device)
        for found in tag_items:
            carrying = torch.zeros(self.n_items, dtype=torch.bool, device=self.device)
            if len(found):
                carrying[torch.as_tensor(found, device=self.device)] = True
            mask &= carrying
        return mask


@dataclass(frozen=True)
class RankRow:
    """One list to rank: its length, user bias, left-out items and allowed items."""

    n: int
    bias: float = 0.0
    excluded: IndexArray = field(default_factory=lambda: NO_ITEMS)
    """Item indices to leave out (none negative; repeats are taken once)."""
    allowed: torch.Tensor | None = None
    """(m,) mask of the items the list may hold (a tag filter; None: every item)."""


Ranked = tuple[torch.Tensor, torch.Tensor]
"""`topk`'s values and indices of a plan's rows."""

RankedList = tuple[list[int], list[float]]
"""One row's item indices and scores, best first."""


@dataclass(frozen=True)
class RankPlan:
    """Rows of one item table ranked by one matrix product and one `topk`."""

    table: ItemTable
    embeddings: torch.Tensor | None
    """(rows, k) user vectors (None: zero vectors, the fallback's rows)."""
    rows: Sequence[RankRow]
    k: int
    """How many items `topk` takes per row."""
    blocked: list[tuple[int, torch.Tensor]]
    """Per row with a tag filter, the (m,) mask of items scored -inf before `topk`."""
    dropped: list[frozenset[int]]
    """Per row, the items dropped from its top k afterwards."""
    scattered: torch.Tensor | None
    """Positions (row * m + item) of the items scored -inf before `topk` (None: none)."""
    out: torch.Tensor | None = None
    """A reusable (rows, m) score buffer."""

    def run(self) -> Ranked:
        """The k best raw scores (sorted) and their item indices per row: the part of a ranking
        that releases the GIL (a matrix product, a scatter and a `topk`)."""
        with torch.inference_mode():
            raw = self.table.raw_scores(self.embeddings, len(self.rows), self.out)
            if self.scattered is not None:
                raw.view(-1).index_fill_(0, self.scattered, NEG_INF)
            for row, mask in self.blocked:
                raw[row].masked_fill_(mask, NEG_INF)
            return torch.topk(raw, min(self.k, raw.shape[1]), dim=1)

    def lists(self, ranked: Ranked) -> list[RankedList]:
        """Each row's top n (item index, score): dropped and blocked items left out, each score
        with its row's bias and the model's transform."""
        values, indices = ranked
        with torch.inference_mode():
            biases = torch.tensor(
                [row.bias for row in self.rows], dtype=values.dtype, device=values.device
            )
            scores = self.table.transform(values + biases.unsqueeze(1))
        result: list[RankedList] = []
        for row, dropped, row_raw, row_scores, row_indices in zip(
            self.rows,
            self.dropped,
            values.tolist(),
            scores.tolist(),
            indices.tolist(),
            strict=True,
        ):
            found: list[int] = []
            kept: list[float] = []
            for raw, score, index in zip(row_raw, row_scores, row_indices, strict=True):
                if len(found) == row.n or raw == NEG_INF:
                    break
                if index not in dropped:
                    found.append(index)
                    kept.append(score)
            result.append((found, kept))
        return result


def plan_ranking(
    table: ItemTable,
    embeddings: torch.Tensor | None,
    rows: Sequence[RankRow],
    out: torch.Tensor | None = None,
) -> RankPlan | None:
    """The plan that ranks `rows` (user vectors `embeddings`; None: zero vectors) over the
    table's items; None when no row can hold an item."""
    blocked: list[tuple[int, torch.Tensor]] = []
    dropped: list[frozenset[int]] = []
    scattered_rows: list[int] = []
    scattered: list[IndexArray] = []
    wanted = 0
    for j, row in enumerate(rows):
        excluded = row.excluded
        if len(excluded) > EXCLUDED_AFTER_TOPK:
            scattered_rows.append(j)
            scattered.append(excluded)
            dropped.append(NOTHING_DROPPED)
            wanted = max(wanted, row.n)
        else:
            left_out = frozenset(excluded.tolist()) if len(excluded) else NOTHING_DROPPED
            dropped.append(left_out)
            wanted = max(wanted, row.n + len(left_out))
        if row.allowed is not None:
            blocked.append((j, ~row.allowed))
    k = min(wanted, table.n_items)
    if k <= 0:
        return None
    positions = (
        _positions(scattered_rows, scattered, table.n_items, table.device) if scattered else None
    )
    return RankPlan(table, embeddings, rows, k, blocked, dropped, positions, out)


def _positions(
    rows: list[int], items: list[IndexArray], n_items: int, device: torch.device
) -> torch.Tensor:
    """The flat positions (row * m + item) of the items to score -inf: one scatter for the
    batch."""
    flat = [part + row * n_items if row else part for row, part in zip(rows, items, strict=True)]
    joined = np.concatenate(flat) if len(flat) > 1 else flat[0]
    return torch.as_tensor(joined.astype(np.int64, copy=False), device=device)


def rank(
    table: ItemTable, embeddings: torch.Tensor | None, rows: Sequence[RankRow]
) -> list[RankedList]:
    """Each row's top n (item index, score), ranked where this is called."""
    plan = plan_ranking(table, embeddings, rows)
    if plan is None:
        return [([], []) for _ in rows]
    return plan.lists(plan.run())


def similar(table: ItemTable, item: int, n: int) -> RankedList:
    """The n items whose factors are closest in cosine to `item`'s, itself left out."""
    if table.normalized is None or table.normalized_t is None:
        raise ValueError("the model has no item factors to compare")
    k = min(n, table.n_items - 1)
    if k <= 0:
        return [], []
    with torch.inference_mode():
        sims = table.normalized[item].unsqueeze(0) @ table.normalized_t
        sims[0, item] = NEG_INF
        values, indices = torch.topk(sims, k, dim=1)
    return indices[0].tolist(), values[0].tolist()


def excluded_indices(*parts: IndexArray) -> IndexArray:
    """The non-negative item indices of several index arrays, joined (repeats may remain: a
    mask or a set takes them once; sorting them out would cost more than a long history's
    whole ranking)."""
    joined = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else NO_ITEMS
    return joined[joined >= 0] if len(joined) and joined.min() < 0 else joined
