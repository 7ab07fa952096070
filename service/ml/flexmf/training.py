"""The FlexMF epoch loop: shuffled minibatches on the training device, optimizer, schedule,
progress reports and early stopping. Model-specific work lives in `train_batch`."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from service.ml.base import ProgressCallback, TrainingProgress
from service.ml.flexmf.config import FlexMFConfigBase
from service.ml.flexmf.model import FlexMFParameters, Gather, dense_gather
from service.ml.flexmf.optim import RowSparseAdam

Validator = Callable[[], float]


def train_epochs(
    run_epoch: Callable[[], float],
    module: torch.nn.Module,
    epochs: int,
    progress: ProgressCallback | None,
    validate: Validator | None,
    patience: int,
) -> tuple[list[float], int | None]:
    """Run up to `epochs` epochs with progress reports; with `validate`, stop after `patience`
    epochs without improvement and restore the best epoch's parameters.

    Returns the epochs' losses and the best epoch (None when nothing was validated).
    """
    start = time.perf_counter()
    losses: list[float] = []
    best_error = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    for epoch in range(epochs):
        losses.append(run_epoch())
        # validated before the report, so that the report carries the epoch's validation RMSE
        error = None if validate is None else validate()
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(TrainingProgress(epoch + 1, epochs, losses[-1], elapsed, error))
        if error is None:
            continue
        if error < best_error:
            best_error, stale, best_epoch = error, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return losses, best_epoch


"""Returns the validation RMSE (lower is better) of the current parameters."""


Optimizer = torch.optim.Optimizer | RowSparseAdam


def make_optimizer(model: FlexMFParameters, config: FlexMFConfigBase) -> Optimizer:
    """AdamW (dense, weight decay) unless reg_method is "L2": then row-sparse (lazy) Adam."""
    params = list(model.parameters())
    if config.reg_method == "L2":
        return RowSparseAdam(params, lr=config.learning_rate)
    decay = config.regularization if config.reg_method == "AdamW" else 0.0
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=decay, fused=fused)


def lr_factor(config: FlexMFConfigBase, epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch under the configured schedule."""
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return 1.0
    progress = epoch / (config.epochs - 1)
    low = config.lr_min_factor
    if config.lr_schedule == "cosine":
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return float(low**progress)


class FlexMFTrainer(ABC):
    """Runs epochs of shuffled minibatches over `n_samples` training rows."""

    def __init__(
        self,
        model: FlexMFParameters,
        config: FlexMFConfigBase,
        n_samples: int,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.config = config
        self.n_samples = n_samples
        self.generator = generator
        self.device = model.user_table.device
        self.optimizer = make_optimizer(model, config)
        self.gather: Gather = (
            self.optimizer.gather if isinstance(self.optimizer, RowSparseAdam) else dense_gather
        )
        self.epochs_trained = 0
        self.best_epoch = 0

    @abstractmethod
    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """The loss of one minibatch of training rows (its gradient is then applied)."""

    def train_step(self, rows: torch.Tensor) -> torch.Tensor:
        """Update the parameters on one minibatch; returns its loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.train_batch(rows)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.detach()

    def penalty(self, *tensors: torch.Tensor | None) -> torch.Tensor | float:
        """The L2 penalty (reg_method "L2") over gathered rows: mean squared norm per row."""
        if self.config.reg_method != "L2" or self.config.regularization == 0:
            return 0.0
        total: torch.Tensor | float = 0.0
        for tensor in tensors:
            if tensor is None:
                continue
            squares = tensor.square()
            rows = squares.sum(-1) if squares.dim() > 1 else squares
            total = total + rows.mean()
        return self.config.regularization * total

    def _set_lr(self, epoch: int) -> None:
        rate = self.config.learning_rate * lr_factor(self.config, epoch)
        if isinstance(self.optimizer, RowSparseAdam):
            self.optimizer.lr = rate
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = rate

    def run_epoch(self) -> float:
        """One pass over the shuffled training rows; returns the mean batch loss."""
        self._set_lr(self.epochs_trained)
        self.model.train(True)
        order = torch.randperm(self.n_samples, generator=self.generator, device=self.device)
        total = torch.zeros((), device=self.device)
        batches = 0
        for start in range(0, self.n_samples, self.config.batch_size):
            total += self.train_step(order[start : start + self.config.batch_size])
            batches += 1
        self.epochs_trained += 1
        self.model.train(False)
        self.epoch_finished()
        return float(total) / max(batches, 1)

    def epoch_finished(self) -> None:
        """Hook after each epoch (e.g. to collect sampler statistics); nothing by default."""
        return None

    def fit(
        self,
        progress: ProgressCallback | None = None,
        validate: Validator | None = None,
        patience: int = 3,
    ) -> list[float]:
        """Train for the configured epochs (stopping early on `validate`); returns losses."""
        losses, best = train_epochs(
            self.run_epoch, self.model, self.config.epochs, progress, validate, patience
        )
        self.best_epoch = self.epochs_trained if best is None else best
        return losses
