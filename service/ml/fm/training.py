"""The factorization machines' epoch loop: shuffled minibatches, lazy Adam over the rows a batch
touches, per-group L2 penalties, cosine schedule, progress reports and early stopping."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from service.ml.base import ProgressCallback
from service.ml.flexmf.optim import RowSparseAdam
from service.ml.flexmf.training import Validator, train_epochs
from service.ml.fm.config import FMConfigBase
from service.ml.fm.model import DeviceRows, FMParameters, side_sums

"""Returns a validation error (lower is better) of the current parameters."""


def lr_factor(config: FMConfigBase, epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch under the configured schedule."""
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return 1.0
    progress = epoch / (config.epochs - 1)
    low = config.lr_min_factor
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


class FMTrainer(ABC):
    """Runs epochs of shuffled minibatches over `n_samples` training rows."""

    def __init__(
        self,
        params: FMParameters,
        config: FMConfigBase,
        user_rows: DeviceRows,
        item_rows: DeviceRows,
        samples: tuple[torch.Tensor, torch.Tensor],
        generator: torch.Generator,
    ) -> None:
        self.params = params
        self.config = config
        self.user_rows = user_rows
        self.item_rows = item_rows
        users, items = samples
        self.n_samples = len(users)
        self.generator = generator
        self.device = params.user_table.device
        self.optimizer = RowSparseAdam(list(params.parameters()), lr=config.learning_rate)
        user_counts = _occurrences(user_rows, users, params.user_layout.size)
        item_counts = _occurrences(item_rows, items, params.item_layout.size)
        self.user_reg = (
            params.user_layout.group_weights(
                config.reg_user_id, config.reg_user_features, config.reg_implicit
            ).to(self.device)
            + config.uniform_regularization / user_counts
        )
        self.item_reg = (
            params.item_layout.group_weights(config.reg_item_id, config.reg_item_features, 0.0).to(
                self.device
            )
            + config.uniform_regularization / item_counts
        )
        self.user_bias_reg = config.reg_bias + config.bias_damping / user_counts
        self.item_bias_reg = config.reg_bias + config.bias_damping / item_counts
        self.epochs_trained = 0
        self.best_epoch = 0

    def side(
        self, user_side: bool, entities: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable embedding sums (E, k), side biases (E,) and L2 penalties (E,) of
        distinct entities of one side."""
        table = self.params.user_table if user_side else self.params.item_table
        rows = self.user_rows if user_side else self.item_rows
        reg = self.user_reg if user_side else self.item_reg
        bias_reg = self.user_bias_reg if user_side else self.item_bias_reg
        index, values, segment = rows.select(entities)
        gathered = self.optimizer.gather(table, index)
        embedding, bias = side_sums(gathered, values, segment, len(entities))
        k = gathered.shape[1] - 1
        per_row = reg[index] * gathered[:, :k].square().sum(1)
        per_row = (per_row + bias_reg[index] * gathered[:, k].square()) * values.square()
        penalty = torch.zeros(len(entities), dtype=gathered.dtype, device=self.device)
        return embedding, bias, penalty.index_add(0, segment, per_row)

    @abstractmethod
    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """The loss of one minibatch of training rows (its gradient is then applied)."""

    def run_epoch(self) -> float:
        """One pass over the shuffled training rows; returns the mean batch loss."""
        self.optimizer.lr = self.config.learning_rate * lr_factor(self.config, self.epochs_trained)
        order = torch.randperm(self.n_samples, generator=self.generator, device=self.device)
        total = torch.zeros((), device=self.device)
        batches = 0
        for start in range(0, self.n_samples, self.config.batch_size):
            self.optimizer.zero_grad()
            loss = self.train_batch(order[start : start + self.config.batch_size])
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            total += loss.detach()
            batches += 1
        self.epochs_trained += 1
        return float(total) / max(batches, 1)

    def fit(
        self,
        progress: ProgressCallback | None = None,
        validate: Validator | None = None,
        patience: int = 3,
    ) -> list[float]:
        """Train for the configured epochs (stopping early on `validate`); returns losses."""
        losses, best = train_epochs(
            self.run_epoch, self.params, self.config.epochs, progress, validate, patience
        )
        self.best_epoch = self.epochs_trained if best is None else best
        return losses


def _occurrences(rows: DeviceRows, entities: torch.Tensor, size: int) -> torch.Tensor:
    """How many training interactions reach each table row (at least 1)."""
    counts = torch.bincount(entities, minlength=rows.n_rows).to(torch.float32)
    lengths = rows.indptr[1:] - rows.indptr[:-1]
    total = torch.zeros(size, device=counts.device)
    total.index_add_(0, rows.indices, torch.repeat_interleave(counts, lengths))
    return total.clamp(min=1.0)
