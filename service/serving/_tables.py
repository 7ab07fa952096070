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
    offsets: torch.Tensor
    """(m,) item bias plus global bias: the score of a zero user vector before the transform."""
    normalized: torch.Tensor | None
    """(m, k) unit-length factors for cosine similarity (None without factors)."""
    transform: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device

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
        return cls(
            name=model.name,
            explicit=model.explicit,
            vocabulary=model.item_ids,
            item_ids=model.item_ids.ids,
            factors=factors,
            offsets=offsets,
            normalized=normalized,
            transform=model.transform_scores,
            device=device,
        )

    @property
    def n_items(self) -> int:
        """Number of items the model knows."""
        return int(self.offsets.shape[0])

    @property
    def width(self) -> int:
        """Number of factors."""
        return int(self.factors.shape[1])

    def score(self, embeddings: torch.Tensor | None, biases: torch.Tensor) -> torch.Tensor:
        """Scores (B, m) of user vectors (B, k) with biases (B,) over every item.

        None for `embeddings` means zero vectors: the item biases alone (the fallback ranking).
        """
        if embeddings is None or self.width == 0:
            raw = self.offsets.unsqueeze(0).repeat(biases.shape[0], 1)
        else:
            raw = torch.addmm(self.offsets, embeddings.to(self.factors.dtype), self.factors.T)
        raw += biases.to(raw.dtype).unsqueeze(1)
        return self.transform(raw)

    def score_items(
        self, embedding: torch.Tensor, bias: float, items: torch.Tensor
    ) -> torch.Tensor:
        """Scores (len(items),) of one user vector over given item indices."""
        raw = self.factors[items] @ embedding.to(self.factors.dtype) if self.width else None
        offsets = self.offsets[items] + bias
        return self.transform(offsets if raw is None else raw + offsets)

    def top(self, scores: torch.Tensor, n: int) -> list[list[tuple[str, float]]]:
        """The top n (item id, score) pairs of each row, leaving out masked (-inf) items."""
        k = min(n, scores.shape[1])
        if k <= 0:
            return [[] for _ in range(scores.shape[0])]
        values, indices = torch.topk(scores, k, dim=1)
        counts = (values != NEG_INF).sum(dim=1).tolist()  # masked items sort last
        ids = self.item_ids
        return [
            [(ids[index], value) for index, value in zip(row_idx[:c], row_val[:c], strict=True)]
            for row_idx, row_val, c in zip(indices.tolist(), values.tolist(), counts, strict=True)
        ]


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
        size = int(rows.db_ids.max()) + 1 if len(rows.db_ids) else 0
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
        inside = db_ids < len(self.by_db_id)
        return np.where(inside, self.by_db_id[np.where(inside, db_ids, 0)], -1)

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


def apply_masks(
    scores: torch.Tensor,
    excluded: Sequence[IndexArray],
    allowed: torch.Tensor | None,
) -> torch.Tensor:
    """Set excluded items (per row) and items outside `allowed` (all rows) to -inf in place."""
    rows = [np.full(len(found), row, dtype=np.int64) for row, found in enumerate(excluded)]
    if rows:
        row_index = np.concatenate(rows)
        col_index = np.concatenate(list(excluded))
        if len(col_index):
            keep = col_index >= 0
            scores[
                torch.as_tensor(row_index[keep], device=scores.device),
                torch.as_tensor(col_index[keep], device=scores.device),
            ] = NEG_INF
    if allowed is not None:
        scores.masked_fill_(~allowed.unsqueeze(0), NEG_INF)
    return scores
