"""numba kernels of the compiled CPU step of implicit FlexMF (see `cpu_step`); imported on first
CPU use only, compiled on first call.

Each table row is kept beside its two Adam moments in one float32 row [param | m | v], so a
touched row is one contiguous block. A minibatch is grouped by distinct user and by distinct item
(ascending, so that the passes walk the tables in address order), then updated in two parallel
passes over distinct rows, each prefetching the rows it reads next:

1. per user: the scores of its samples, the loss's gradient with respect to each score, the
   user's row gradient, and its lazy Adam update (its old row kept for pass 2);
2. per item: its row gradient from the scores' gradients and the old user rows, and its update.

Every row's sums run in a fixed order, so results do not depend on the thread count.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba.core import cgutils, types
from numba.extending import intrinsic

CACHE = os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK)
"""numba caches beside this file: ask for it only where that directory is writable."""

LOGISTIC = 0
PAIRWISE = 1
LINE = 16
"""float32 values per cache line."""


def _prefetch_intrinsic(typingctx: Any, array: Any, index: Any) -> Any:
    """Ask the CPU to fetch the cache line of array[index] (1-d, no bounds check): rows are
    read at random, and the passes know the next rows long before they read them."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer_type = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [pointer_type, i32, i32, i32])
        function = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module, function_type, "llvm.prefetch.p0i8"
        )
        pointer = builder.bitcast(builder.gep(data, [args[1]]), pointer_type)
        # read, keep in all cache levels, data cache
        builder.call(
            function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        )
        return context.get_dummy_value()

    return types.void(array, types.intp), codegen


_prefetch: Any = intrinsic(_prefetch_intrinsic)


@numba.njit(cache=CACHE, nogil=True)
def _prefetch_row(row: Any, width: int) -> None:
    """Prefetch the first `width` values of a row."""
    for d in range(0, width, LINE):
        _prefetch(row, d)


@numba.njit(cache=CACHE, nogil=True, fastmath=True, error_model="numpy")
def _softplus(x: Any) -> Any:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@numba.njit(cache=CACHE, nogil=True, fastmath=True, error_model="numpy")
def _sigmoid(x: Any) -> Any:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(cache=CACHE, nogil=True)
def _group(
    keys: Any, mark: Any, slot: Any, rows: Any, starts: Any, members: Any, place: Any
) -> int:
    """Group entry positions by key: the distinct keys ascending in `rows` (so that the passes
    walk the tables in address order), entry positions of key `rows[s]` in
    `members[starts[s]:starts[s + 1]]` (ascending), and each entry's place t in `members`;
    `slot` maps each key to its s. `mark` is all zero before and after. Returns the number of
    distinct keys."""
    for e in range(keys.shape[0]):
        mark[keys[e]] = 1
    n = 0
    for key in range(mark.shape[0]):
        if mark[key]:
            mark[key] = 0
            slot[key] = n
            rows[n] = key
            n += 1
    starts[: n + 1] = 0
    for e in range(keys.shape[0]):
        starts[slot[keys[e]] + 1] += 1
    for s in range(n):
        starts[s + 1] += starts[s]
    for e in range(keys.shape[0]):
        s = slot[keys[e]]
        members[starts[s]] = e
        place[e] = starts[s]
        starts[s] += 1
    for s in range(n, 0, -1):
        starts[s] = starts[s - 1]
    starts[0] = 0
    return n


@numba.njit(cache=CACHE, nogil=True)
def _contains(indices: Any, start: int, end: int, value: int) -> bool:
    """Whether the ascending `indices[start:end]` holds `value` (binary search)."""
    low, high = start, end
    while low < high:
        middle = (low + high) >> 1
        if indices[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low < end and indices[low] == value


@numba.njit(cache=CACHE, nogil=True)
def positive_bits(indptr: Any, indices: Any, n_items: int, bits: Any) -> None:
    """Set bit u * n_items + i of `bits` (uint64 words, zero before) for each item i of each
    user u (`indptr`, `indices`)."""
    one = np.uint64(1)
    for user in range(indptr.shape[0] - 1):
        base = user * n_items
        for t in range(indptr[user], indptr[user + 1]):
            key = base + indices[t]
            bits[key >> 6] |= one << np.uint64(key & 63)


@numba.njit(cache=CACHE, nogil=True)
def mark_positives(
    users: Any, candidates: Any, indptr: Any, indices: Any, bits: Any, n_items: int, pending: Any
) -> int:
    """Where pending[b, j] is set, replace it by whether candidates[b, j] is among the items
    of users[b]: by the bit set of `positive_bits` unless it is empty, else by a binary search
    in `indices` (ascending per user); returns how many are."""
    n = candidates.shape[0]
    found = 0
    if bits.shape[0]:
        for b in range(n):
            base = users[b] * n_items
            for j in range(candidates.shape[1]):
                if pending[b, j]:
                    key = base + candidates[b, j]
                    hit = (bits[key >> 6] >> np.uint64(key & 63)) & np.uint64(1) != 0
                    pending[b, j] = hit
                    found += hit
        return found
    for b in range(n):
        # rows are read at random: their bounds first, then their middles (of pending rows
        # only: after the first round, few are)
        if b + 8 < n and _any_set(pending, b + 8):
            _prefetch(indptr, users[b + 8])
        if b + 4 < n and _any_set(pending, b + 4):
            ahead = users[b + 4]
            _prefetch(indices, (indptr[ahead] + indptr[ahead + 1]) >> 1)
        user = users[b]
        for j in range(candidates.shape[1]):
            if pending[b, j]:
                hit = _contains(indices, indptr[user], indptr[user + 1], candidates[b, j])
                pending[b, j] = hit
                found += hit
    return found


@numba.njit(cache=CACHE, nogil=True)
def _any_set(flags: Any, row: int) -> bool:
    """Whether any of flags[row, :] is set."""
    for j in range(flags.shape[1]):  # noqa: SIM110 (a loop: numba compiles no generator here)
        if flags[row, j]:
            return True
    return False


@numba.njit(cache=CACHE, nogil=True, fastmath=True, error_model="numpy")
def _adam(row: Any, grad: Any, width: int, beta1: Any, beta2: Any, eps: Any, step_size: Any,
          root2: Any) -> None:  # fmt: skip
    """One Adam update of row[:width] with moments row[width:2w] and row[2w:3w]."""
    one = np.float32(1.0)
    for d in range(width):
        g = grad[d]
        m = row[width + d] + (g - row[width + d]) * (one - beta1)
        v = row[2 * width + d] * beta2 + (one - beta2) * g * g
        row[width + d] = m
        row[2 * width + d] = v
        row[d] -= step_size * m / (math.sqrt(v) / root2 + eps)


@numba.njit(parallel=True, cache=CACHE, nogil=True, fastmath=True, error_model="numpy")
def train_batches(
    user_state: Any,
    item_state: Any,
    users: Any,
    items: Any,
    batch_size: int,
    k: int,
    user_bias: bool,
    item_bias: bool,
    loss_code: int,
    positive_weight: float,
    regularization: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    first_step: int,
    n_blocks: int,
    work: Any,
    losses: Any,
) -> None:
    """Train on consecutive minibatches of `users` (n,) and their items (n, 1 + c) (positive
    first), updating the [param | m | v] tables in place; Adam steps count from `first_step`.
    Each batch's loss (with the "L2" penalty) goes to `losses`."""
    user_mark, item_mark, user_slot, item_slot, user_rows, user_starts, user_members = work[:7]
    item_rows, item_starts, item_members, user_place, item_place, score_grad, user_old = work[7:14]
    row_loss, item_loss = work[14:]
    width = items.shape[1]
    count = width - 1
    w_u = k + 1 if user_bias else k
    w_i = k + 1 if item_bias else k
    b1, b2, epsilon = np.float32(beta1), np.float32(beta2), np.float32(eps)
    pw = np.float32(positive_weight)
    zero = np.float32(0.0)
    n = users.shape[0]
    n_batches = (n + batch_size - 1) // batch_size
    for batch in range(n_batches):
        s0 = batch * batch_size
        size = min(batch_size, n - s0)
        step = first_step + batch
        bc1 = 1.0 - beta1**step
        step_size = np.float32(lr / bc1)
        root2 = np.float32(math.sqrt(1.0 - beta2**step))
        total = np.float32(size * width if loss_code == LOGISTIC else size * count)
        decay_user = np.float32(2.0 * regularization / size)
        decay_pos = np.float32(2.0 * regularization / size)
        decay_neg = np.float32(2.0 * regularization / (size * count))
        batch_users = users[s0 : s0 + size]
        n_users = _group(
            batch_users, user_mark, user_slot, user_rows, user_starts, user_members, user_place
        )
        flat = items[s0 : s0 + size].ravel()
        n_items = _group(
            flat, item_mark, item_slot, item_rows, item_starts, item_members, item_place
        )
        blocks = min(n_blocks, n_users)
        for block in numba.prange(blocks):
            grad = np.empty(w_u, dtype=np.float32)
            scores = np.empty(width, dtype=np.float32)
            end = (block + 1) * n_users // blocks
            for s in range(block * n_users // blocks, end):
                if s + 1 < end:
                    _prefetch_row(user_state[user_rows[s + 1]], 3 * w_u)
                    for t in range(user_starts[s + 1], user_starts[s + 2]):
                        for j in range(width):
                            _prefetch_row(item_state[items[s0 + user_members[t], j]], w_i)
                row = user_state[user_rows[s]]
                old = user_old[s]
                norm = zero
                for d in range(w_u):
                    old[d] = row[d]
                    norm += row[d] * row[d]
                samples = user_starts[s + 1] - user_starts[s]
                decay = decay_user * np.float32(samples)
                for d in range(w_u):
                    grad[d] = decay * row[d]
                loss = zero
                for t in range(user_starts[s], user_starts[s + 1]):
                    b = user_members[t]
                    for j in range(width):
                        item = item_state[items[s0 + b, j]]
                        score = zero
                        for d in range(k):
                            score += row[d] * item[d]
                        if user_bias:
                            score += row[k]
                        if item_bias:
                            score += item[k]
                        scores[j] = score
                    if loss_code == LOGISTIC:
                        loss += pw * _softplus(-scores[0])
                        score_grad[t * width] = -pw * _sigmoid(-scores[0]) / total
                        for j in range(1, width):
                            loss += _softplus(scores[j])
                            score_grad[t * width + j] = _sigmoid(scores[j]) / total
                    else:
                        positive = zero
                        for j in range(1, width):
                            margin = scores[j] - scores[0]
                            loss += _softplus(margin)
                            g = _sigmoid(margin) / total
                            score_grad[t * width + j] = g
                            positive -= g
                        score_grad[t * width] = positive
                    for j in range(width):
                        g = score_grad[t * width + j]
                        item = item_state[items[s0 + b, j]]
                        for d in range(k):
                            grad[d] += g * item[d]
                        if user_bias:
                            grad[k] += g
                row_loss[s] = loss / total + regularization * samples * norm / size
                _adam(row, grad, w_u, b1, b2, epsilon, step_size, root2)
        blocks = min(n_blocks, n_items)
        for block in numba.prange(blocks):
            grad = np.empty(w_i, dtype=np.float32)
            end = (block + 1) * n_items // blocks
            for s in range(block * n_items // blocks, end):
                if s + 1 < end:
                    _prefetch_row(item_state[item_rows[s + 1]], 3 * w_i)
                    for t in range(item_starts[s + 1], item_starts[s + 2]):
                        b = item_members[t] // width
                        _prefetch_row(user_old[user_slot[users[s0 + b]]], w_u)
                row = item_state[item_rows[s]]
                for d in range(w_i):
                    grad[d] = zero
                positives = 0
                for t in range(item_starts[s], item_starts[s + 1]):
                    e = item_members[t]
                    b, j = e // width, e % width
                    g = score_grad[user_place[b] * width + j]
                    if j == 0:
                        positives += 1
                    user = user_old[user_slot[users[s0 + b]]]
                    for d in range(k):
                        grad[d] += g * user[d]
                    if item_bias:
                        grad[k] += g
                negatives = item_starts[s + 1] - item_starts[s] - positives
                decay = decay_pos * np.float32(positives) + decay_neg * np.float32(negatives)
                norm = zero
                for d in range(w_i):
                    norm += row[d] * row[d]
                    grad[d] += decay * row[d]
                share = positives / size + negatives / (size * count)
                item_loss[s] = regularization * share * norm
                _adam(row, grad, w_i, b1, b2, epsilon, step_size, root2)
        value = 0.0
        for s in range(n_users):
            value += row_loss[s]
        for s in range(n_items):
            value += item_loss[s]
        losses[batch] = value


def workspace(n_users: int, n_items: int, batch_size: int, width: int, w_u: int) -> tuple[Any, ...]:
    """The kernel's reusable buffers for tables of these sizes and batches of `width` items."""
    entries = batch_size * width
    return (
        np.zeros(n_users, dtype=np.uint8),
        np.zeros(n_items, dtype=np.uint8),
        np.zeros(n_users, dtype=np.int64),
        np.zeros(n_items, dtype=np.int64),
        np.empty(batch_size, dtype=np.int64),
        np.zeros(batch_size + 1, dtype=np.int64),
        np.empty(batch_size, dtype=np.int64),
        np.empty(entries, dtype=np.int64),
        np.zeros(entries + 1, dtype=np.int64),
        np.empty(entries, dtype=np.int64),
        np.empty(batch_size, dtype=np.int64),
        np.empty(entries, dtype=np.int64),
        np.empty(entries, dtype=np.float32),
        np.empty((batch_size, w_u), dtype=np.float32),
        np.empty(batch_size, dtype=np.float64),
        np.empty(entries, dtype=np.float64),
    )
