"""Explicit-feedback ALS with damped biases (LensKit's BiasedMF design)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.ml.als import _common
from service.ml.als._common import (
    ALSConfig,
    history_tensors,
    initial_factors,
    run_sweeps,
    synchronize,
)
from service.ml.als._rows import (
    RowPlan,
    build_plan,
    cholesky_solve,
    gather_entries,
    gather_factors,
    gram,
    row_dot,
    weighted_sum,
    with_zero_row,
)
from service.ml.base import (
    ItemParameters,
    ModelNotFittedError,
    ProgressCallback,
    Recommender,
    UserVector,
)
from service.ml.data import CSR, IndexArray, Interactions, ValueArray, build_csr
from service.ml.device import resolve_device

if TYPE_CHECKING:
    from service.ml.als._native import NativeRows


class UserItemPair(BaseModel):
    """Separate values for the user and the item side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: float = Field(gt=0.0)
    """Value for the user side."""
    item: float = Field(gt=0.0)
    """Value for the item side."""


class BiasedALSConfig(ALSConfig):
    """Hyper-parameters of `als-biased`.

    Defaults were chosen on the validation slice of ML-100K's seeded 90/10 rating split (fit on
    `split.train`, RMSE on `split.validation`): e.g. regularization 0.10 → 0.9047, 0.12 → 0.9042,
    {user 0.15, item 0.10} → 0.9045; 50 or 100 factors and 40 epochs were no better.
    """

    embedding_size: int = Field(default=40, ge=1, le=4096)
    """Number of latent factors per user and item."""

    epochs: int = Field(default=20, ge=1, le=10_000)
    """Number of ALS sweeps; each solves every item row, then every user row."""

    regularization: float | UserItemPair = Field(default=0.12)
    """L2 penalty on the factors, multiplied by each row's number of ratings (weighted-λ); one
    value for both sides or {"user": …, "item": …} as in LensKit."""

    damping: float = Field(default=5.0, ge=0.0)
    """Bayesian damping of the user and item biases: pseudo-ratings at the global mean."""

    bias_updates: bool = True
    """Re-solve each row's bias jointly with its factors in every sweep, with `damping` as the
    bias's ridge penalty (False: LensKit's fixed damped biases, factors fit their residuals)."""

    init_scale: float = Field(default=0.1, gt=0.0)
    """Standard deviation of the random initial user factors."""

    def side_regularization(self, side: str) -> float:
        """The factor penalty of the "user" or "item" side."""
        if isinstance(self.regularization, UserItemPair):
            return self.regularization.user if side == "user" else self.regularization.item
        return self.regularization

    @field_validator("regularization")
    @classmethod
    def _positive(cls, value: float | UserItemPair) -> float | UserItemPair:
        if isinstance(value, float | int) and value <= 0:
            raise ValueError("must be greater than 0")
        return value


class BiasedALS(Recommender[BiasedALSConfig]):
    """Biased matrix factorization trained by alternating least squares on bias residuals."""

    name: ClassVar[str] = "als-biased"
    config_type: ClassVar[type[BiasedALSConfig]] = BiasedALSConfig
    explicit: ClassVar[bool] = True

    def __init__(self, config: BiasedALSConfig | None = None) -> None:
        super().__init__(config)
        self._user_factors: torch.Tensor | None = None
        self._item_factors: torch.Tensor | None = None
        self._user_bias: torch.Tensor | None = None
        self._item_bias: torch.Tensor | None = None
        self._global_bias = 0.0

    # ----- training --------------------------------------------------------------------------
    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Compute damped biases, then alternate exact item and user solves on the residuals."""
        if data.values is None:
            raise ValueError("als-biased needs explicit ratings (interactions have no values)")
        cfg = self.config
        device = resolve_device(cfg.device)
        values = data.values.astype(np.float64)
        global_bias = float(values.mean()) if len(values) else 0.0
        item_bias = _damped_means(data.items, values - global_bias, data.n_items, cfg.damping)
        user_bias = _damped_means(
            data.users, values - global_bias - item_bias[data.items], data.n_users, cfg.damping
        )
        centered = (values - global_bias).astype(np.float32)
        user_csr = build_csr(data.users, data.items, centered, data.n_users, data.n_items)
        item_csr = build_csr(data.items, data.users, centered, data.n_items, data.n_users)
        k = cfg.embedding_size
        user_rows = _side_rows(user_csr, k, device, cfg.chunk_elements)
        item_rows = _side_rows(item_csr, k, device, cfg.chunk_elements)
        users = initial_factors(data.n_users, k, cfg.init_scale, cfg.seed).to(device)
        items = torch.zeros((data.n_items, k), device=device)
        users[torch.as_tensor(user_csr.counts() == 0, device=device)] = 0.0
        user_b = torch.as_tensor(user_bias, dtype=torch.float32, device=device)
        item_b = torch.as_tensor(item_bias, dtype=torch.float32, device=device)
        user_penalties = (cfg.side_regularization("user"), cfg.damping, cfg.bias_updates)
        item_penalties = (cfg.side_regularization("item"), cfg.damping, cfg.bias_updates)

        def sweep() -> float:
            _solve_side(item_rows, users, user_b, items, item_b, item_penalties)
            squared = _solve_side(user_rows, items, item_b, users, user_b, user_penalties)
            synchronize(device)
            return math.sqrt(squared / max(len(data), 1))

        self.user_ids, self.item_ids, self.device = data.user_ids, data.item_ids, device
        self._global_bias = global_bias
        self._user_bias, self._item_bias = user_b, item_b
        self._user_factors, self._item_factors = users, items
        run_sweeps(cfg.epochs, sweep, progress)

    # ----- factor form -----------------------------------------------------------------------
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if (
            self._user_factors is None
            or self._item_factors is None
            or self._user_bias is None
            or self._item_bias is None
        ):
            raise ModelNotFittedError("als-biased is not fitted")
        return self._user_factors, self._item_factors, self._user_bias, self._item_bias

    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trained user factors (B, k) and damped user biases (B,)."""
        user_factors, _, user_bias, _ = self._fitted()
        return user_factors[users], user_bias[users]

    def item_parameters(self) -> ItemParameters:
        """Item factors, damped item biases and the global mean rating."""
        _, item_factors, _, item_bias = self._fitted()
        return ItemParameters(factors=item_factors, bias=item_bias, global_bias=self._global_bias)

    @torch.inference_mode()
    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """A fresh damped bias and the exact least-squares user factors for a rated history."""
        _, item_factors, _, item_bias = self._fitted()
        if ratings is None:
            raise ValueError("als-biased fold-in needs the ratings of the history")
        known, values = history_tensors(items, ratings, self.n_items, self.device)
        assert values is not None
        k = item_factors.shape[1]
        if known.numel() == 0:
            return UserVector(torch.zeros(k, device=self.device), 0.0, has_bias=True)
        centered = (values.double() - self._global_bias - item_bias[known].double()).float()
        factors = item_factors[known]
        count = float(known.numel())
        regularization = self.config.side_regularization("user")
        if self.config.bias_updates:
            augmented = torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1)
            system = augmented.T @ augmented + torch.diag(
                _penalty(k, count, regularization, self.config.damping, self.device)
            )
            solution = cholesky_solve(system.unsqueeze(0), (augmented.T @ centered).unsqueeze(0))
            embedding, bias = solution[0, :k], float(solution[0, k])
        else:
            bias = float(centered.double().sum() / (count + self.config.damping))
            system = factors.T @ factors
            system += torch.eye(k, device=self.device) * (regularization * count)
            rhs = (factors.T @ (centered - bias)).unsqueeze(0)
            embedding = cholesky_solve(system.unsqueeze(0), rhs)[0]
        return UserVector(embedding=embedding, bias=bias, has_bias=True)

    # ----- persistence -----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Factors, biases and the global mean."""
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        return {
            "user_factors": user_factors,
            "item_factors": item_factors,
            "user_bias": user_bias,
            "item_bias": item_bias,
            "global_bias": torch.tensor([self._global_bias], dtype=torch.float64),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned."""
        self._user_factors = tensors["user_factors"]
        self._item_factors = tensors["item_factors"]
        self._user_bias = tensors["user_bias"]
        self._item_bias = tensors["item_bias"]
        self._global_bias = float(tensors["global_bias"].item())


def _damped_means(
    index: IndexArray, values: npt.NDArray[np.float64], size: int, damping: float
) -> npt.NDArray[np.float64]:
    """Σ values / (count + damping) per index: means shrunk toward 0 by `damping` pseudo-rows."""
    sums = np.bincount(index, weights=values, minlength=size)
    denominators = np.bincount(index, minlength=size) + damping
    means: npt.NDArray[np.float64] = np.divide(
        sums, denominators, out=np.zeros(size), where=denominators > 0
    )
    return means


def _penalty(
    k: int, count: float, regularization: float, damping: float, device: torch.device
) -> torch.Tensor:
    """Ridge penalties of one row's [factors, bias]: λ·count on factors, damping on the bias."""
    penalty = torch.full((k + 1,), regularization * count, device=device)
    penalty[k] = damping
    return penalty


def _side_rows(csr: CSR, k: int, device: torch.device, chunk_elements: int) -> RowPlan | NativeRows:
    """One side's rows as the compiled kernel (CPU) or the padded torch chunks take them."""
    if _common.use_native(device):
        from service.ml.als import _native

        assert csr.values is not None
        # factoring a row's (k+1)-square system costs about (k+1)/3 entries' Gram updates
        return _native.NativeRows(csr, csr.values, (k + 1) // 3)
    return build_plan(csr, k + 1, device, chunk_elements)


def _solve_side(
    rows: RowPlan | NativeRows,
    fixed: torch.Tensor,
    fixed_bias: torch.Tensor,
    target: torch.Tensor,
    target_bias: torch.Tensor,
    penalties: tuple[float, float, bool],
) -> float:
    """Solve every row of one side in place; returns the summed squared training error.

    The rows' values are ratings minus the global mean; the fixed side's biases are subtracted
    here. With `bias_updates` each row solves [factors, bias] against [fixed factors, 1].
    `penalties` is (λ per rating, damping, bias_updates).
    """
    if not isinstance(rows, RowPlan):
        from service.ml.als._native import biased_solve

        return biased_solve(rows, fixed, fixed_bias, target, target_bias, penalties)
    return _solve_plan(rows, fixed, fixed_bias, target, target_bias, *penalties)


def _solve_plan(
    plan: RowPlan,
    fixed: torch.Tensor,
    fixed_bias: torch.Tensor,
    target: torch.Tensor,
    target_bias: torch.Tensor,
    regularization: float,
    damping: float,
    bias_updates: bool,
) -> float:
    """The torch path of `_solve_side`: padded chunks of similar-length rows, batched Cholesky."""
    k = fixed.shape[1]
    device = fixed.device
    squared = torch.zeros((), device=device, dtype=torch.float64)
    # with bias updates each row solves [factors, bias] against [fixed factors, 1]
    augmented = torch.cat([fixed, torch.ones_like(fixed[:, :1])], 1) if bias_updates else fixed
    extended = with_zero_row(augmented)
    extended_bias = with_zero_row(fixed_bias)
    for chunk in plan.chunks:
        gathered = gather_factors(extended, chunk)
        residual = chunk.values - gather_entries(extended_bias, chunk)
        if not bias_updates:
            residual = residual - target_bias[chunk.rows].unsqueeze(1) * chunk.mask
        system = gram(gathered)
        diagonal = system.diagonal(dim1=1, dim2=2)
        diagonal[:, :k] += (regularization * chunk.counts).unsqueeze(1)
        if bias_updates:
            diagonal[:, k] += damping
        solution = cholesky_solve(system, weighted_sum(gathered, residual))
        target[chunk.rows] = solution[:, :k]
        if bias_updates:
            target_bias[chunk.rows] = solution[:, k]
        error = (residual - row_dot(gathered, solution)) * chunk.mask
        squared += (error * error).sum().double()
    return float(squared)
