"""Batched row solves for ALS: rows grouped by length into padded chunks, solved together.

A half-sweep of ALS solves one small k-by-k system per row (user or item). Instead of a Python loop
per row, rows are sorted by their number of entries and cut into chunks whose padded size stays
under a memory budget; each chunk gathers the fixed side's factors as a (B, L, k) tensor, builds
its Gram matrices with one `bmm`, and is solved with batched Cholesky or conjugate gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.ml.data import CSR

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Upper bound on padded B·L·k floats gathered at once (64 MiB in float32)."""

PADDING_RATIO = 1.25
"""A chunk's longest row has at most this many times its shortest row's entries (or 8 more)."""


@dataclass(frozen=True)
class RowChunk:
    """Rows of similar length, padded to the longest: columns, values and a 0/1 mask."""

    rows: torch.Tensor
    """Row indices (B,)."""
    slots: torch.Tensor
    """Column index + 1 of each entry, flattened (B·L,); padding is 0, the zero row that
    `with_zero_row` prepends (one `index_select` gathers a chunk, far faster than 2-D indexing)."""
    values: torch.Tensor
    """Entry values (B, L); 0 on padding."""
    mask: torch.Tensor
    """1.0 on real entries, 0.0 on padding (B, L)."""
    counts: torch.Tensor
    """Real entries per row (B,), as float."""


@dataclass(frozen=True)
class RowPlan:
    """All non-empty rows of one matrix side as chunks, and the rows that have no entries."""

    chunks: list[RowChunk]
    empty_rows: torch.Tensor
    n_rows: int
    nnz: int


def build_plan(
    csr: CSR,
    embedding_size: int,
    device: torch.device,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> RowPlan:
    """Chunk a CSR's rows by length so each chunk's gathered factors fit `chunk_elements`."""
    counts = csr.counts()
    width = max(embedding_size, 1)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    sorted_counts = counts[order].tolist()
    max_rows = max(1, chunk_elements // (width * width))
    budget = max(1, chunk_elements // width)
    values = csr.values if csr.values is not None else np.ones(len(csr.indices), np.float32)
    chunks: list[RowChunk] = []
    start = 0
    while start < len(order):
        end = start + 1
        # rows are sorted by length, so the chunk's padded length is its last row's count;
        # bounding it by a multiple of the first row's count bounds the wasted padding
        longest = max(int(sorted_counts[start] * PADDING_RATIO), sorted_counts[start] + 8)
        while (
            end < len(order)
            and end - start < max_rows
            and sorted_counts[end] <= longest
            and (end + 1 - start) * sorted_counts[end] <= budget
        ):
            end += 1
        chunks.append(_make_chunk(csr, values, order[start:end], device))
        start = end
    empty = np.flatnonzero(counts == 0)
    return RowPlan(
        chunks=chunks,
        empty_rows=torch.as_tensor(empty, dtype=torch.int64, device=device),
        n_rows=csr.n_rows,
        nnz=int(counts.sum()),
    )


def _make_chunk(csr: CSR, values: np.ndarray, rows: np.ndarray, device: torch.device) -> RowChunk:
    starts = csr.indptr[rows]
    lengths = csr.indptr[rows + 1] - starts
    width = int(lengths.max())
    offsets = np.arange(width)
    real = offsets[None, :] < lengths[:, None]
    positions = np.where(real, starts[:, None] + offsets[None, :], 0)
    slots = np.where(real, csr.indices[positions] + 1, 0)
    vals = np.where(real, values[positions], 0.0).astype(np.float32)
    return RowChunk(
        rows=torch.as_tensor(rows, dtype=torch.int64, device=device),
        slots=torch.as_tensor(slots.reshape(-1), dtype=torch.int64, device=device),
        values=torch.as_tensor(vals, device=device),
        mask=torch.as_tensor(real.astype(np.float32), device=device),
        counts=torch.as_tensor(lengths.astype(np.float32), device=device),
    )


def with_zero_row(factors: torch.Tensor) -> torch.Tensor:
    """Factors (or a bias vector) with a zero row in front, so that padding (slot 0) gathers 0."""
    return torch.cat([factors.new_zeros((1, *factors.shape[1:])), factors])


def gather_factors(extended: torch.Tensor, chunk: RowChunk) -> torch.Tensor:
    """The fixed side's factors of a chunk's entries (B, L, k) from `with_zero_row` factors."""
    batch, length = chunk.values.shape
    return extended.index_select(0, chunk.slots).view(batch, length, extended.shape[1])


def gather_entries(extended: torch.Tensor, chunk: RowChunk) -> torch.Tensor:
    """A per-column vector's value at each of a chunk's entries (B, L), from `with_zero_row`."""
    return extended.index_select(0, chunk.slots).view(chunk.values.shape)


def cholesky_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the SPD systems gram (B, k, k) · x = rhs (B, k) exactly."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if bool((info != 0).any()):
        # a numerically singular row (e.g. no regularization): fall back to least squares
        solution: torch.Tensor = torch.linalg.lstsq(gram, rhs.unsqueeze(-1)).solution
        return solution.squeeze(-1)
    # two triangular solves run several times faster on CPU than batched `cholesky_solve`
    lower = torch.linalg.solve_triangular(factor, rhs.unsqueeze(-1), upper=False)
    exact: torch.Tensor = torch.linalg.solve_triangular(factor.mT, lower, upper=True)
    return exact.squeeze(-1)


def gram(gathered: torch.Tensor) -> torch.Tensor:
    """Σ_j y_j y_jᵀ for each row: (B, L, k) → (B, k, k)."""
    return torch.bmm(gathered.transpose(1, 2), gathered)


def weighted_gram(gathered: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_j w_j y_j y_jᵀ for each row: (B, L, k) and (B, L) → (B, k, k)."""
    return torch.bmm(gathered.transpose(1, 2), gathered * weights.unsqueeze(-1))


def weighted_sum(gathered: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_j w_j y_j for each row: (B, L, k) and (B, L) → (B, k)."""
    return torch.bmm(weights.unsqueeze(1), gathered).squeeze(1)


def row_dot(gathered: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y_j · x_b for every entry: (B, L, k) and (B, k) → (B, L)."""
    # (B, 1, k) @ (B, k, L) runs much faster on CPU than (B, L, k) @ (B, k, 1)
    return torch.bmm(x.unsqueeze(1), gathered.transpose(1, 2)).squeeze(1)


def conjugate_gradient(
    product: Callable[[torch.Tensor], torch.Tensor],
    residual: torch.Tensor,
    x: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """A few CG steps from `x` on the SPD systems A_r x_r = b_r of every row r at once, in place.

    `residual` is b - A x at the start (consumed); `product(v)` returns the rows A_r v_r (B, k)
    for directions v (B, k). Nothing else of A is needed, so no row's k-by-k matrix is formed.
    `x` is updated in place and returned.
    """
    direction = residual.clone()
    rs_old = torch.linalg.vecdot(residual, residual)
    tiny = torch.finfo(x.dtype).tiny
    for step in range(steps):
        a_direction = product(direction)
        denominator = torch.linalg.vecdot(direction, a_direction)
        alpha = torch.where(denominator > tiny, rs_old / denominator.clamp(min=tiny), 0.0)
        x.addcmul_(alpha.unsqueeze(1), direction)
        if step + 1 == steps:
            break  # the last step's residual and direction would go unused
        residual.addcmul_(alpha.unsqueeze(1), a_direction, value=-1.0)
        rs_new = torch.linalg.vecdot(residual, residual)
        beta = torch.where(rs_old > tiny, rs_new / rs_old.clamp(min=tiny), 0.0)
        direction.mul_(beta.unsqueeze(1)).add_(residual)
        rs_old = rs_new
    return x


class SparseRows:
    """One side's entries as a torch CSR matrix: sparse products without gathering factors.

    `weighted_sum` is one sparse-dense product (Σ_j w_rj y_j per row) and `sampled_dots` one
    sampled product (x_r · y_j at every entry), so a CG step costs O(nnz·k) with no padding.
    """

    def __init__(self, csr: CSR, device: torch.device) -> None:
        self.n_rows = csr.n_rows
        self.nnz = int(csr.indptr[-1])
        self.crow = torch.as_tensor(csr.indptr, dtype=torch.int64, device=device)
        self.col = torch.as_tensor(csr.indices, dtype=torch.int64, device=device)
        values = csr.values if csr.values is not None else np.ones(self.nnz, np.float32)
        self.values = torch.as_tensor(values, dtype=torch.float32, device=device)
        self._patterns: dict[int, torch.Tensor] = {}

    def matrix(self, values: torch.Tensor, n_cols: int) -> torch.Tensor:
        """The CSR matrix of this pattern with the given entry values."""
        with warnings.catch_warnings():
            # torch flags sparse CSR as beta once per process; the kernels used here are stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow,
                self.col,
                values,
                (self.n_rows, n_cols),
                check_invariants=False,
            )

    def weighted_sum(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Σ_j values_rj · dense_j for every row r: (n_rows, k)."""
        return self.matrix(values, dense.shape[0]) @ dense

    def sampled_dots(self, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
        """This pattern as a CSR matrix whose entry (r, j) is rows_r · cols_t[:, j]; its
        `values()` may be rescaled in place and the matrix used in a sparse product."""
        pattern = self._patterns.get(cols_t.shape[1])
        if pattern is None:
            pattern = self.matrix(torch.zeros_like(self.values), cols_t.shape[1])
            self._patterns[cols_t.shape[1]] = pattern
        sampled: torch.Tensor = torch.sparse.sampled_addmm(pattern, rows, cols_t, beta=0.0)
        return sampled
