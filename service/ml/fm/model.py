"""The learned parameters of a factorization machine and the per-side sums of its formula.

A factorization machine scores a feature vector x as

    w0 + Σ_j w_j x_j + Σ_{j<l} <v_j, v_l> x_j x_l.

With the features split into a user side U and an item side I this is exactly

    w0 + (Σ_U w x + pair_U) + (Σ_I w x + pair_I) + <Σ_U v x, Σ_I v x>,
    pair_S = ½ (|Σ_S v x|² - Σ_S |v|² x²),

so a user's vector is the sum of its side's embeddings, and its bias the side's linear terms plus
the pairwise terms within the side (the same for items): the shared factor form.

Each side has one table whose row j holds feature j's embedding v_j (k values) then its weight w_j.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from service.ml.features import SparseRows

Gather = Callable[[nn.Parameter, torch.Tensor], torch.Tensor]
"""Differentiable row lookup of a parameter at an index tensor."""


@dataclass(frozen=True)
class SideLayout:
    """Where each feature group lives in one side's table: ids, then attributes/tags, then
    (user side only) the implicit-feedback items."""

    ids: int
    features: int
    implicit: int = 0

    @property
    def feature_offset(self) -> int:
        """First row of the attribute/tag features."""
        return self.ids

    @property
    def implicit_offset(self) -> int:
        """First row of the implicit-feedback features."""
        return self.ids + self.features

    @property
    def size(self) -> int:
        """Rows of the side's table."""
        return self.ids + self.features + self.implicit

    def group_weights(self, ids: float, features: float, implicit: float) -> torch.Tensor:
        """A per-row tensor holding each group's value (e.g. its L2 strength)."""
        return torch.cat(
            [
                torch.full((self.ids,), ids),
                torch.full((self.features,), features),
                torch.full((self.implicit,), implicit),
            ]
        )


@dataclass(frozen=True)
class DeviceRows:
    """Feature rows (CSR) of a side's entities as tensors on the training device."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, rows: SparseRows, device: torch.device) -> DeviceRows:
        """Copy CSR arrays to a device."""
        return cls(
            indptr=torch.as_tensor(rows.indptr, device=device),
            indices=torch.as_tensor(rows.indices, device=device),
            values=torch.as_tensor(rows.values, device=device),
        )

    @property
    def n_rows(self) -> int:
        """Number of entities."""
        return int(self.indptr.shape[0] - 1)

    def select(self, entities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened (feature index, value, position in `entities`) of the given rows."""
        starts = self.indptr[entities]
        lengths = self.indptr[entities + 1] - starts
        segment = torch.repeat_interleave(
            torch.arange(len(entities), device=starts.device), lengths
        )
        first = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum()), device=starts.device) - first[segment]
        position = starts[segment] + within
        return self.indices[position], self.values[position], segment


def side_sums(
    rows: torch.Tensor, values: torch.Tensor, segment: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entity: the sum of its features' embeddings (n, k) and its side bias (n,), the linear
    terms plus the within-side pairwise terms, from gathered table rows (T, k+1)."""
    k = rows.shape[1] - 1
    scaled = rows * values.unsqueeze(1)
    sums = torch.zeros((n, k + 1), dtype=rows.dtype, device=rows.device).index_add(
        0, segment, scaled
    )
    embedding, linear = sums[:, :k], sums[:, k]
    own = torch.zeros(n, dtype=rows.dtype, device=rows.device)
    own = own.index_add(0, segment, scaled[:, :k].square().sum(1))
    pairwise = 0.5 * (embedding.square().sum(1) - own)
    return embedding, linear + pairwise


def hstack_rows(parts: list[tuple[SparseRows, int]], n_rows: int) -> SparseRows:
    """Concatenate CSR rows of several feature groups, shifting each group's indices by its
    offset into the side's table."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    for rows, _ in parts:
        lengths += np.diff(rows.indptr)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.zeros(int(indptr[-1]), dtype=np.int64)
    values = np.zeros(int(indptr[-1]), dtype=np.float32)
    cursor = indptr[:-1].copy()
    for rows, offset in parts:
        counts = np.diff(rows.indptr)
        target = np.repeat(cursor, counts) + (
            np.arange(int(counts.sum())) - np.repeat(rows.indptr[:-1], counts)
        )
        indices[target] = rows.indices + offset
        values[target] = rows.values
        cursor += counts
    return SparseRows(indptr=indptr, indices=indices, values=values)


class FMParameters(nn.Module):
    """The user-side and item-side tables of embeddings and weights."""

    def __init__(
        self,
        user_layout: SideLayout,
        item_layout: SideLayout,
        embedding_size: int,
        init_scale: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.user_layout = user_layout
        self.item_layout = item_layout
        self.user_table = nn.Parameter(self._init(user_layout.size, init_scale, generator))
        self.item_table = nn.Parameter(self._init(item_layout.size, init_scale, generator))

    def _init(self, rows: int, scale: float, generator: torch.Generator) -> torch.Tensor:
        embedding = torch.randn(rows, self.embedding_size, generator=generator) * scale
        return torch.cat([embedding, torch.zeros(rows, 1)], dim=1)

    @torch.no_grad()
    def zero_rows(self, user_rows: torch.Tensor, item_rows: torch.Tensor) -> None:
        """Zero the given table rows (features that never occur in training)."""
        self.user_table[user_rows] = 0.0
        self.item_table[item_rows] = 0.0


@torch.no_grad()
def all_side_sums(
    table: torch.Tensor, rows: DeviceRows, n: int, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding sums (n, k) and side biases (n,) of every row of a side, in chunks."""
    embeddings, biases = [], []
    for start in range(0, n, chunk):
        entities = torch.arange(start, min(start + chunk, n), device=table.device)
        index, values, segment = rows.select(entities)
        emb, bias = side_sums(table[index], values, segment, len(entities))
        embeddings.append(emb)
        biases.append(bias)
    k = table.shape[1] - 1
    if not embeddings:
        return table.new_zeros((0, k)), table.new_zeros(0)
    return torch.cat(embeddings), torch.cat(biases)
