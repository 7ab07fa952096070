"""The compiled CPU path of implicit FlexMF training with the row-sparse Adam ("L2"): the same
minibatch step as the torch path (`implicit_step` and `RowSparseAdam`), run by numba kernels
(`cpu_kernel`) on all of torch's threads over many minibatches per call, with the torch path's
negatives (the same sampler, drawn batch by batch). The torch path stays for CUDA and for WARP's
misranked sampler."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import torch

from service.ml.flexmf.config import FlexMFImplicitConfig
from service.ml.flexmf.model import FlexMFParameters
from service.ml.flexmf.optim import RowSparseAdam
from service.ml.flexmf.sampling import NegativeSampler

CHUNK_ROWS = 1 << 20
"""Positives per kernel call (rounded down to whole minibatches)."""
BLOCKS_PER_THREAD = 8
"""Blocks of distinct rows per thread and pass, handed out one at a time: a thread that the OS
deschedules (a shared machine) holds back one small block, not a fixed half of the rows."""


def compiled_step_applies(config: FlexMFImplicitConfig, device: torch.device) -> bool:
    """Whether the compiled step trains this configuration on this device."""
    return (
        device.type == "cpu"
        and config.reg_method == "L2"
        and config.loss in ("logistic", "pairwise")
        and config.selected_negative_strategy() != "misranked"
    )


def _threads() -> int:
    """As many numba threads as torch uses (the worker's and the bench's setting)."""
    most = max(1, int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    threads = max(1, min(torch.get_num_threads(), most))
    numba.set_num_threads(threads)
    numba.set_parallel_chunksize(1)  # dynamic: each thread takes the next block when done
    return threads


def _with_moments(table: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Rows [param | Adam m | Adam v] of a table, moments zero."""
    values = table.detach().cpu().numpy()
    state = np.zeros((values.shape[0], 3 * values.shape[1]), dtype=np.float32)
    state[:, : values.shape[1]] = values
    return state


class CompiledImplicitStep:
    """Trains a model's tables in place through the compiled kernels, with its own Adam state."""

    def __init__(
        self,
        model: FlexMFParameters,
        config: FlexMFImplicitConfig,
        users: torch.Tensor,
        items: torch.Tensor,
        sampler: NegativeSampler,
        optimizer: RowSparseAdam,
    ) -> None:
        from service.ml.flexmf import cpu_kernel  # compiled on first use, CPU only

        self.kernel = cpu_kernel
        self.model, self.config, self.sampler = model, config, sampler
        self.user_array, self.item_array = users.numpy(), items.numpy()
        self.betas, self.eps = optimizer.betas, optimizer.eps
        self.user_state = _with_moments(model.user_table)
        self.item_state = _with_moments(model.item_table)
        self.steps = 0
        width = 1 + config.negative_count
        self.work = cpu_kernel.workspace(
            model.n_users,
            model.n_items,
            config.batch_size,
            width,
            int(model.user_table.shape[1]),
        )

    def train(self, rows: torch.Tensor, lr: float) -> list[float]:
        """Update on consecutive minibatches of the training rows `rows`; their losses."""
        config = self.config
        batch = config.batch_size
        chunk = batch * max(1, CHUNK_ROWS // batch)
        losses: list[float] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk].numpy()
            users = self.user_array.take(part)
            items = np.empty((len(part), 1 + config.negative_count), dtype=np.int64)
            items[:, 0] = self.item_array.take(part)
            # the torch path's draws, batch by batch: the same negatives for the same seed
            for first in range(0, len(part), batch):
                items[first : first + batch, 1:] = self.sampler.sample_array(
                    users[first : first + batch], config.negative_count
                )
            losses.extend(self.train_on(users, items, lr))
        self.write_back()
        return losses

    def train_on(
        self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64], lr: float
    ) -> list[float]:
        """Update on consecutive minibatches of users (n,) and their items (n, 1 + c), the
        positive first; their losses. Only `write_back` (or `train`) updates the model's tables."""
        config = self.config
        batch = config.batch_size
        code = self.kernel.LOGISTIC if config.loss == "logistic" else self.kernel.PAIRWISE
        out = np.empty((len(users) + batch - 1) // batch, dtype=np.float64)
        self.kernel.train_batches(
            self.user_state,
            self.item_state,
            users,
            items,
            batch,
            self.model.embedding_size,
            self.model.has_user_bias,
            self.model.has_item_bias,
            code,
            config.positive_weight,
            config.regularization,
            lr,
            self.betas[0],
            self.betas[1],
            self.eps,
            self.steps + 1,
            _threads() * BLOCKS_PER_THREAD,
            self.work,
            out,
        )
        self.steps += len(out)
        return list(out.tolist())

    def write_back(self) -> None:
        """Copy the trained rows into the model's tables."""
        with torch.no_grad():
            for table, state in (
                (self.model.user_table, self.user_state),
                (self.model.item_table, self.item_state),
            ):
                table.copy_(torch.from_numpy(state[:, : table.shape[1]]))
