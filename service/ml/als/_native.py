"""Compiled CPU row solvers for ALS (numba): one fused pass per row while its entries are cached.

The torch path (`_rows`) streams every half-sweep over all entries once per CG step, so a row's
factors are fetched from memory again at each step. These kernels solve one row at a time: the
row's few hundred fixed-side factors stay in cache for its whole solve. Rows are split into blocks
of equal work, solved in parallel. Imported on first CPU use only (compilation happens then too).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import numpy.typing as npt
import torch

from service.ml.data import CSR

# numba falls back silently when it cannot write its cache beside the source; cache only then
_CACHE = os.access(os.path.dirname(__file__), os.W_OK)

BLOCKS_PER_THREAD = 32
"""Equal-work row blocks per thread, handed out one at a time: a thread that the OS deschedules
(a shared machine) holds back one small block, not a fixed half of the rows."""

_TINY = float(np.finfo(np.float32).tiny)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class NativeRows:
    """One side's CSR as the kernels take it, with row blocks of similar work per thread."""

    def __init__(self, csr: CSR, values: FloatArray, row_overhead: int) -> None:
        self.indptr = np.ascontiguousarray(csr.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(csr.indices, dtype=np.int64)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.nnz = int(self.indptr[-1])
        # a row costs its entries plus a fixed k-by-k part (the Gram product or the factorization)
        work = np.diff(self.indptr) + row_overhead
        cumulative = np.concatenate([[0], np.cumsum(work)])
        threads = _max_threads()
        blocks = max(1, min(csr.n_rows, threads * BLOCKS_PER_THREAD))
        marks = np.linspace(0, cumulative[-1], blocks + 1)
        bounds = np.searchsorted(cumulative, marks, side="left")
        bounds[0], bounds[-1] = 0, csr.n_rows
        self.bounds = np.unique(bounds).astype(np.int64)


def set_threads() -> None:
    """Run the kernels on as many threads as torch uses (the worker's and the bench's setting)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), _max_threads())))
    numba.set_parallel_chunksize(1)  # dynamic: each thread takes the next block when done


def _max_threads() -> int:
    """The most threads numba's pool has (fixed when numba starts)."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]


def as_array(tensor: torch.Tensor) -> FloatArray:
    """A float32 CPU tensor's storage as a numpy array (shared, so kernels write in place)."""
    array: FloatArray = tensor.detach().numpy()
    return array


def implicit_cg(
    rows: NativeRows,
    fixed: torch.Tensor,
    base: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    with_loss: bool,
) -> float:
    """`steps` warm-started CG steps on every row of implicit ALS, in place on `target`.

    `base` is YᵀY + λI of the fixed side `fixed`; `rows.values` are the confidences minus one.
    Returns the training loss at the starting `target` but λ‖fixed‖² (0.0 without `with_loss`).
    """
    set_threads()
    loss: float = _implicit_cg(
        rows.indptr,
        rows.indices,
        rows.values,
        as_array(fixed),
        as_array(base.contiguous()),
        as_array(target),
        rows.bounds,
        steps,
        with_loss,
    )
    return loss


def biased_solve(
    rows: NativeRows,
    fixed: torch.Tensor,
    fixed_bias: torch.Tensor,
    target: torch.Tensor,
    target_bias: torch.Tensor,
    penalties: tuple[float, float, bool],
) -> float:
    """Exact ridge solves of every non-empty row of biased ALS, in place; the squared error.

    `rows.values` are ratings minus the global mean; `penalties` is (λ per rating, damping,
    whether the row's bias is solved jointly with its factors).
    """
    regularization, damping, bias_updates = penalties
    set_threads()
    squared: float = _biased_solve(
        rows.indptr,
        rows.indices,
        rows.values,
        as_array(fixed),
        as_array(fixed_bias),
        as_array(target),
        as_array(target_bias),
        rows.bounds,
        regularization,
        damping,
        bias_updates,
    )
    return squared


@numba.njit(parallel=True, fastmath=True, nogil=True, cache=_CACHE)
def _implicit_cg(  # type: ignore[no-untyped-def]
    indptr, indices, extra, fixed, base, target, bounds, steps, with_loss
):
    k = fixed.shape[1]
    n_blocks = len(bounds) - 1
    losses = np.zeros(n_blocks)
    for block in numba.prange(n_blocks):
        residual = np.empty(k, np.float32)
        direction = np.empty(k, np.float32)
        product = np.empty(k, np.float32)
        longest = 0
        for row in range(bounds[block], bounds[block + 1]):
            longest = max(longest, indptr[row + 1] - indptr[row])
        # the row's fixed factors, gathered once: the CG steps then read them in order
        gathered = np.empty((longest, k), np.float32)
        loss = 0.0
        for row in range(bounds[block], bounds[block + 1]):
            start, stop = indptr[row], indptr[row + 1]
            x = target[row]
            # r = b - A x = Σ_j (c_j - (c_j - 1) s_j) y_j - (YᵀY + λI) x
            for a in range(k):
                acc = np.float32(0.0)
                for c in range(k):
                    acc += base[a, c] * x[c]
                residual[a] = -acc
            if with_loss:
                for a in range(k):
                    loss -= residual[a] * x[a]
            for e in range(start, stop):
                j = indices[e]
                weight = extra[e]
                y = gathered[e - start]
                score = np.float32(0.0)
                for c in range(k):
                    y[c] = fixed[j, c]
                    score += y[c] * x[c]
                if with_loss:
                    loss += (weight + 1.0) * (1.0 - score) ** 2 - score * score
                coefficient = 1.0 + weight - weight * score
                for c in range(k):
                    residual[c] += coefficient * y[c]
            rs_old = np.float32(0.0)
            for a in range(k):
                direction[a] = residual[a]
                rs_old += residual[a] * residual[a]
            for step in range(steps):
                if rs_old <= _TINY:
                    break
                for a in range(k):
                    acc = np.float32(0.0)
                    for c in range(k):
                        acc += base[a, c] * direction[c]
                    product[a] = acc
                for e in range(stop - start):
                    score = np.float32(0.0)
                    for c in range(k):
                        score += gathered[e, c] * direction[c]
                    score *= extra[start + e]
                    for c in range(k):
                        product[c] += score * gathered[e, c]
                denominator = np.float32(0.0)
                for a in range(k):
                    denominator += direction[a] * product[a]
                if denominator <= _TINY:
                    break
                alpha = rs_old / denominator
                for a in range(k):
                    x[a] += alpha * direction[a]
                if step + 1 == steps:
                    break
                rs_new = np.float32(0.0)
                for a in range(k):
                    residual[a] -= alpha * product[a]
                    rs_new += residual[a] * residual[a]
                beta = rs_new / rs_old
                for a in range(k):
                    direction[a] = residual[a] + beta * direction[a]
                rs_old = rs_new
        losses[block] = loss
    return losses.sum()


@numba.njit(parallel=True, fastmath=True, nogil=True, cache=_CACHE)
def _biased_solve(  # type: ignore[no-untyped-def]
    indptr,
    indices,
    values,
    fixed,
    fixed_bias,
    target,
    target_bias,
    bounds,
    regularization,
    damping,
    bias_updates,
):
    k = fixed.shape[1]
    width = k + 1 if bias_updates else k
    n_blocks = len(bounds) - 1
    errors = np.zeros(n_blocks)
    group = 4  # entries added to the Gram matrix together: four FMAs per load of a Gram row
    for block in numba.prange(n_blocks):
        gram = np.empty((width, width), np.float32)
        rhs = np.empty(width, np.float32)
        ys = np.zeros((group, width), np.float32)
        residuals = np.zeros(group, np.float32)
        squared = 0.0
        for row in range(bounds[block], bounds[block + 1]):
            start, stop = indptr[row], indptr[row + 1]
            if start == stop:
                continue
            gram[:, :] = 0.0
            rhs[:] = 0.0
            own_bias = np.float32(0.0) if bias_updates else target_bias[row]
            for first in range(start, stop, group):
                filled = min(group, stop - first)
                for t in range(group):
                    if t < filled:
                        j = indices[first + t]
                        for c in range(k):
                            ys[t, c] = fixed[j, c]
                        if bias_updates:
                            ys[t, k] = 1.0
                        residuals[t] = values[first + t] - fixed_bias[j] - own_bias
                    else:
                        ys[t, :] = 0.0
                        residuals[t] = 0.0
                for a in range(width):
                    y0, y1, y2, y3 = ys[0, a], ys[1, a], ys[2, a], ys[3, a]
                    rhs[a] += (
                        residuals[0] * y0
                        + residuals[1] * y1
                        + residuals[2] * y2
                        + residuals[3] * y3
                    )
                    for c in range(a + 1):
                        gram[a, c] += y0 * ys[0, c] + y1 * ys[1, c] + y2 * ys[2, c] + y3 * ys[3, c]
            count = np.float32(stop - start)
            for a in range(k):
                gram[a, a] += regularization * count
            if bias_updates:
                gram[k, k] += damping
            _cholesky_solve_lower(gram, rhs)
            for c in range(k):
                target[row, c] = rhs[c]
            if bias_updates:
                target_bias[row] = rhs[k]
            for e in range(start, stop):
                j = indices[e]
                prediction = rhs[k] if bias_updates else np.float32(0.0)
                for c in range(k):
                    prediction += fixed[j, c] * rhs[c]
                error = values[e] - fixed_bias[j] - own_bias - prediction
                squared += error * error
        errors[block] = squared
    return errors.sum()


@numba.njit(fastmath=True, nogil=True, cache=_CACHE)
def _cholesky_solve_lower(matrix, rhs):  # type: ignore[no-untyped-def]
    """Factor the SPD matrix (lower triangle given) in place; overwrite `rhs` with the solution."""
    n = matrix.shape[0]
    for j in range(n):
        pivot = matrix[j, j]
        for p in range(j):
            pivot -= matrix[j, p] * matrix[j, p]
        pivot = np.float32(np.sqrt(max(pivot, _TINY)))
        matrix[j, j] = pivot
        for i in range(j + 1, n):
            acc = matrix[i, j]
            for p in range(j):
                acc -= matrix[i, p] * matrix[j, p]
            matrix[i, j] = acc / pivot
    for i in range(n):  # L z = b
        acc = rhs[i]
        for p in range(i):
            acc -= matrix[i, p] * rhs[p]
        rhs[i] = acc / matrix[i, i]
    for i in range(n - 1, -1, -1):  # Lᵀ x = z
        acc = rhs[i]
        for p in range(i + 1, n):
            acc -= matrix[p, i] * rhs[p]
        rhs[i] = acc / matrix[i, i]
