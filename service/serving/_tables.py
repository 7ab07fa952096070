"""A model's item side on the serving device, and its join with the database's item catalog.

`ItemTable` is built once per loaded model: item factors, item biases plus the global bias, and
unit-length factors for cosine similarity, all on the serving device. Scoring a batch of user
vectors is one matrix product; exclusions and tag filters are masks; the top N is one `topk`.

`ItemIndex` maps database item ids to the model's item indices (one array lookup for a user's
whole history) and tags to the model indices carrying them; it is rebuilt when items change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.db.profiles import ItemRows
from service.ml.base import Recommender
from service.ml.data import IndexArray, Vocabulary

NEG_INF = float("-inf")


@dataclass(frozen=True)
class ItemTable:
    """One model's item parameters on the serving device, ready for matmul + topk."""

    name: str
    explicit: bool
    vocabulary: Vocabulary
    item_ids: list[str]
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
    user_factors: torch.Tensor
    """(n_users, k) stored user embeddings, gathered once so a request only takes a row view."""
    user_biases: list[float]
    """Stored user biases, as Python floats."""

    def user_vector(self, index: int) -> tuple[torch.Tensor, float]:
        """A trained user's stored embedding (k,) and bias."""
        return self.user_factors[index], self.user_biases[index]

    @classmethod
    def build(cls, model: Recommender[Any], device: torch.device) -> ItemTable:
        """Copy a model's item side to `device` and precompute what every request needs."""
        with torch.inference_mode():
            params = model.item_parameters()
            factors = params.factors.detach().to(device=device, dtype=torch.float32).contiguous()
            offsets = (
                params.bias.detach().to(device=device, dtype=torch.float32) + params.global_bias
            ).contiguous()
            normalized = (
                torch.nn.functional.normalize(factors, dim=1).contiguous()
                if factors.shape[1] > 0
                else None
            )
            user_factors, user_biases = model.user_parameters(
                torch.arange(model.n_users, device=model.device)
            )
            user_factors = user_factors.detach().to(device=device, dtype=torch.float32)
        return cls(
            name=model.name,
            explicit=model.explicit,
            vocabulary=model.item_ids,
            item_ids=model.item_ids.ids,
            factors=factors,
            factors_t=factors.T.contiguous(),
            offsets=offsets,
            normalized=normalized,
            normalized_t=None if normalized is None else normalized.T.contiguous(),
            transform=model.transform_scores,
            device=device,
            user_factors=user_factors.contiguous(),
            user_biases=[float(b) for b in user_biases.detach().cpu().tolist()],
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
        self, embedding: torch.Tensor, bias: float, items: torch.Tensor
    ) -> torch.Tensor:
        """Scores (len(items),) of one user vector over given item indices."""
        raw = self.factors[items] @ embedding.to(self.factors.dtype) if self.width else None
        offsets = self.offsets[items] + bias
        return self.transform(offsets if raw is None else raw + offsets)

    def raw_scores(self, embeddings: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores (B, m) of user vectors (B, k) over every item, without the users' biases
        and before the transform (neither changes a row's order): one matrix product, which
        releases the GIL, so it may run in another thread."""
        if self.width == 0:
            return self.fallback_scores(embeddings.shape[0], out)
        factors_t, offsets = self.factors_t, self.offsets
        vectors = (
            embeddings if embeddings.dtype == factors_t.dtype else embeddings.to(factors_t.dtype)
        )
        if out is None:
            return torch.addmm(offsets, vectors, factors_t)
        return torch.addmm(offsets, vectors, factors_t, out=out)

    def fallback_scores(self, rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores (rows, m) of zero user vectors: the item offsets, in every row."""
        if out is None:
            return self.offsets.unsqueeze(0).repeat(rows, 1)
        return out.copy_(self.offsets.unsqueeze(0).expand(rows, -1))

    def rank(
        self,
        embeddings: torch.Tensor | None,
        rows: int,
        blocked: Sequence[tuple[int, torch.Tensor]],
        k: int,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best raw scores (sorted) and their item indices, per row of user vectors
        (None: zero vectors); `blocked` items of a row (its tag filter) score -inf.

        This is the part of a batch that runs in the batcher's thread: a matrix product and a
        `topk`, each of which releases the GIL, and a thread retakes the GIL from the busy
        event loop after each such call, so they are kept few (exclusions are applied to the
        lists afterwards, see `scored_lists`).
        """
        if embeddings is None:
            raw = self.fallback_scores(rows, out)
        else:
            raw = self.raw_scores(embeddings, out)
        for row, mask in blocked:
            raw[row].masked_fill_(mask, NEG_INF)
        return torch.topk(raw, min(k, raw.shape[1]), dim=1)

    def scored_lists(
        self,
        values: torch.Tensor,
        indices: torch.Tensor,
        biases: Sequence[float],
        excluded: Sequence[set[int]],
        lengths: Sequence[int],
    ) -> list[list[tuple[str, float]]]:
        """(item id, score) lists from `rank`'s raw top values: each row's excluded item
        indices and blocked (-inf) items left out, cut at its length; each score gets its row's
        user bias and the model's transform, as in `score_items`."""
        bias = torch.tensor(biases, dtype=values.dtype, device=values.device).unsqueeze(1)
        return self._lists(values, self.transform(values + bias), indices, excluded, lengths)

    def top(self, scores: torch.Tensor, n: int) -> list[list[tuple[str, float]]]:
        """The top n (item id, score) pairs of each row, leaving out masked (-inf) items."""
        k = min(n, scores.shape[1])
        if k <= 0:
            return [[] for _ in range(scores.shape[0])]
        values, indices = _topk(scores, k)
        rows = scores.shape[0]
        return self._lists(values, values, indices, [set()] * rows, [k] * rows)

    def _lists(
        self,
        ranked: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        excluded: Sequence[set[int]],
        lengths: Sequence[int],
    ) -> list[list[tuple[str, float]]]:
        """Rows of (item id, value) pairs in `ranked` order: each row's excluded indices left
        out, cut at its length or at the first masked (-inf) `ranked` entry."""
        ids = self.item_ids
        result = []
        for row_ranked, row_values, row_indices, left_out, length in zip(
            ranked.tolist(), values.tolist(), indices.tolist(), excluded, lengths, strict=True
        ):
            items: list[tuple[str, float]] = []
            for raw, value, index in zip(row_ranked, row_values, row_indices, strict=True):
                if len(items) == length or raw == NEG_INF:
                    break
                if index not in left_out:
                    items.append((ids[index], value))
            result.append(items)
        return result


TOPK_CHUNK = 128
"""Items per chunk in the two-stage top-k of batches (see `_topk`)."""


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk` of each row (sorted), in two stages for batches of several rows.

    The k best items of a row lie in the k chunks (of TOPK_CHUNK items) with the highest
    maxima, so a batch takes the chunk maxima (one vectorized pass), the top k chunks, and the
    top k of their items: about a third of one full `topk` over the scores.
    """
    rows, m = scores.shape
    chunks = m // TOPK_CHUNK
    if rows < 4 or k * TOPK_CHUNK * 4 > m or scores.device.type != "cpu":
        return torch.topk(scores, k, dim=1)
    body = scores[:, : chunks * TOPK_CHUNK].view(rows, chunks, TOPK_CHUNK)
    best_chunks = torch.topk(body.amax(dim=2), k, dim=1, sorted=False).indices
    candidates = (
        best_chunks.unsqueeze(2) * TOPK_CHUNK + torch.arange(TOPK_CHUNK, device=scores.device)
    ).view(rows, -1)
    if chunks * TOPK_CHUNK < m:  # the items past the last whole chunk are always candidates
        tail = torch.arange(chunks * TOPK_CHUNK, m, device=scores.device)
        candidates = torch.cat([candidates, tail.expand(rows, -1)], dim=1)
    values, positions = torch.topk(torch.gather(scores, 1, candidates), k, dim=1)
    return values, torch.gather(candidates, 1, positions)


@dataclass(frozen=True)
class ItemIndex:
    """Database item ids and tags joined with one model's item vocabulary."""

    rows: ItemRows
    by_db_id: IndexArray
    """Model index of each database item id (-1: the model does not know the item)."""
    tag_items: dict[str, IndexArray]
    """Model indices of the items carrying each tag."""

    @classmethod
    def build(cls, rows: ItemRows, vocabulary: Vocabulary) -> ItemIndex:
        """Join the catalog rows with a vocabulary."""
        # one spare slot past the largest id: ids beyond it (items created since) map there
        size = int(rows.db_ids.max()) + 2 if len(rows.db_ids) else 1
        by_db_id = np.full(size, -1, dtype=np.int64)
        model_indices = vocabulary.indices(rows.external_ids)
        by_db_id[rows.db_ids] = model_indices
        tagged: dict[str, list[int]] = {}
        for index, tags in zip(model_indices.tolist(), rows.tags, strict=True):
            if index >= 0:
                for tag in tags:
                    tagged.setdefault(tag, []).append(index)
        tag_items = {tag: np.asarray(found, dtype=np.int64) for tag, found in tagged.items()}
        return cls(rows=rows, by_db_id=by_db_id, tag_items=tag_items)

    def model_indices(self, db_ids: npt.NDArray[np.int64]) -> IndexArray:
        """Model indices of database item ids (-1 for items the model or this index lacks)."""
        if len(db_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.by_db_id[np.minimum(db_ids, len(self.by_db_id) - 1)]

    def allowed(self, tags: Sequence[str], n_items: int, device: torch.device) -> torch.Tensor:
        """A (m,) mask of the items carrying every tag."""
        mask = torch.ones(n_items, dtype=torch.bool, device=device)
        for tag in dict.fromkeys(tags):
            carrying = torch.zeros(n_items, dtype=torch.bool, device=device)
            found = self.tag_items.get(tag)
            if found is not None and len(found):
                carrying[torch.as_tensor(found, device=device)] = True
            mask &= carrying
        return mask
