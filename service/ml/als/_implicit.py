"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008) with Cholesky or CG row solves."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

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
    SparseRows,
    build_plan,
    cholesky_solve,
    conjugate_gradient,
    gather_factors,
    row_dot,
    weighted_gram,
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


NATIVE_MIN_WORK = 4_000_000
"""Interactions times epochs from which CG runs in the compiled CPU kernel: loading it costs about a
second of CPU once per process, which the torch path's sparse products undercut on less work."""


class ImplicitALSConfig(ALSConfig):
    """Hyper-parameters of `als-implicit`.

    Defaults were chosen on the validation slice of ML-100K's seeded 20% per-user holdout (fit on
    `split.train`, nDCG@10 on `split.validation`): LensKit's weight 40 / regularization 0.1 gave
    0.122, weight 5 / regularization 50 gave 0.193 (weight 10 / 50: 0.187, 5 / 30: 0.186).
    """

    embedding_size: int = Field(default=50, ge=1, le=4096)
    """Number of latent factors per user and item."""

    epochs: int = Field(default=10, ge=1, le=10_000)
    """Number of ALS sweeps; each solves every item row, then every user row."""

    regularization: float = Field(default=50.0, gt=0.0)
    """L2 penalty λ on the factors (not scaled by row counts)."""

    weight: float = Field(default=5.0, ge=0.0)
    """Confidence weight: an observed entry has confidence 1 + weight·r (r = 1 without ratings)."""

    use_ratings: bool = False
    """Scale confidence by the interaction values (True) or treat every interaction as 1."""

    solver: Literal["cg", "cholesky"] = "cg"
    """Row solver: "cg" runs a few warm-started conjugate-gradient steps per row (as the
    `implicit` library does); "cholesky" solves each row's normal equations exactly."""

    cg_steps: int = Field(default=3, ge=1, le=1000)
    """Conjugate-gradient steps per row and half-sweep (solver "cg" only)."""

    init_scale: float = Field(default=0.01, gt=0.0)
    """Standard deviation of the random initial user factors."""


class ImplicitALS(Recommender[ImplicitALSConfig]):
    """Weighted matrix factorization of the binary preference matrix with confidences."""

    name: ClassVar[str] = "als-implicit"
    config_type: ClassVar[type[ImplicitALSConfig]] = ImplicitALSConfig
    explicit: ClassVar[bool] = False

    def __init__(self, config: ImplicitALSConfig | None = None) -> None:
        super().__init__(config)
        self._user_factors: torch.Tensor | None = None
        self._item_factors: torch.Tensor | None = None
        self._item_gram: torch.Tensor | None = None

    # ----- training --------------------------------------------------------------------------
    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Alternate item and user solves of the confidence-weighted least-squares problem."""
        cfg = self.config
        device = resolve_device(cfg.device)
        values = data.values if cfg.use_ratings and data.values is not None else None
        extra = _extra_confidence(values, len(data), cfg.weight)
        user_csr = build_csr(data.users, data.items, extra, data.n_users, data.n_items)
        item_csr = build_csr(data.items, data.users, extra, data.n_items, data.n_users)
        k = cfg.embedding_size
        user_side: RowPlan | SparseRows | NativeRows
        item_side: RowPlan | SparseRows | NativeRows
        native = len(data) * cfg.epochs >= NATIVE_MIN_WORK and _common.use_native(device)
        if cfg.solver == "cg" and native:
            from service.ml.als import _native

            # a row's fixed k-by-k product per CG step costs about k entries' work
            user_side = _native.NativeRows(user_csr, extra_of(user_csr), k)
            item_side = _native.NativeRows(item_csr, extra_of(item_csr), k)
        elif cfg.solver == "cg":
            user_side = SparseRows(user_csr, device)
            item_side = SparseRows(item_csr, device)
        else:
            user_side = build_plan(user_csr, k, device, cfg.chunk_elements)
            item_side = build_plan(item_csr, k, device, cfg.chunk_elements)
        users = initial_factors(data.n_users, k, cfg.init_scale, cfg.seed).to(device)
        items = torch.zeros((data.n_items, k), device=device)
        users[torch.as_tensor(user_csr.counts() == 0, device=device)] = 0.0
        solve = _SideSolver(cfg.regularization, cfg.solver, cfg.cg_steps)

        def sweep() -> float:
            solve(item_side, users, items, with_loss=False)
            # CG: the loss between the item and the user half-sweep; Cholesky: after the sweep
            loss = solve(user_side, items, users)
            loss += cfg.regularization * float((items * items).sum())
            synchronize(device)
            return loss / max(len(data), 1)

        self.user_ids, self.item_ids, self.device = data.user_ids, data.item_ids, device
        self._user_factors, self._item_factors, self._item_gram = users, items, None
        run_sweeps(cfg.epochs, sweep, progress)

    # ----- factor form -----------------------------------------------------------------------
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user_factors is None or self._item_factors is None:
            raise ModelNotFittedError("als-implicit is not fitted")
        return self._user_factors, self._item_factors

    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trained user factors (B, k) and zero biases."""
        user_factors, _ = self._fitted()
        embeddings = user_factors[users]
        return embeddings, torch.zeros(embeddings.shape[0], device=embeddings.device)

    def item_parameters(self) -> ItemParameters:
        """Item factors, zero item biases and no global bias."""
        _, item_factors = self._fitted()
        bias = torch.zeros(item_factors.shape[0], device=item_factors.device)
        return ItemParameters(factors=item_factors, bias=bias, global_bias=0.0)

    @torch.inference_mode()
    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """The exact confidence-weighted least-squares user factors for a history."""
        _, item_factors = self._fitted()
        cfg = self.config
        known, values = history_tensors(items, ratings, self.n_items, item_factors.device)
        if self._item_gram is None:
            self._item_gram = item_factors.T @ item_factors
        k = item_factors.shape[1]
        factors = item_factors[known]
        if values is None or not cfg.use_ratings:
            values = torch.ones(known.shape[0], device=factors.device)
        extra = cfg.weight * values
        system = self._item_gram + cfg.regularization * torch.eye(k, device=factors.device)
        system = system + (factors * extra.unsqueeze(1)).T @ factors
        rhs = factors.T @ (1.0 + extra)
        embedding = cholesky_solve(system.unsqueeze(0), rhs.unsqueeze(0))[0]
        return UserVector(embedding=embedding, bias=0.0, has_bias=False)

    # ----- persistence -----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """User and item factors."""
        user_factors, item_factors = self._fitted()
        return {"user_factors": user_factors, "item_factors": item_factors}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned."""
        self._user_factors = tensors["user_factors"]
        self._item_factors = tensors["item_factors"]
        self._item_gram = None


def _extra_confidence(values: ValueArray | None, n: int, weight: float) -> ValueArray:
    """c - 1 = alpha·r for every interaction (r = 1 without ratings)."""
    if values is None:
        return np.full(n, weight, dtype=np.float32)
    return (weight * values).astype(np.float32)


def extra_of(csr: CSR) -> ValueArray:
    """The CSR's confidence-minus-one values (`build_csr` was given them, so they are present)."""
    assert csr.values is not None
    return csr.values


class _SideSolver:
    """Solves every row of one side of implicit ALS against the other side's fixed factors."""

    def __init__(self, regularization: float, solver: str, cg_steps: int) -> None:
        self.regularization = regularization
        self.solver = solver
        self.cg_steps = cg_steps

    def __call__(
        self,
        side: RowPlan | SparseRows | NativeRows,
        fixed: torch.Tensor,
        target: torch.Tensor,
        with_loss: bool = True,
    ) -> float:
        """Update `target` in place; returns the training loss but λ‖fixed‖² (0 without loss):
        at the starting `target` for CG, at the solution for Cholesky."""
        k = fixed.shape[1]
        # YᵀY + λI is shared by every row: the unobserved entries' contribution at confidence 1
        base = fixed.T @ fixed + self.regularization * torch.eye(k, device=fixed.device)
        if isinstance(side, SparseRows):
            return self._conjugate_gradient(side, fixed, target, base, with_loss)
        if isinstance(side, RowPlan):
            return self._cholesky(side, fixed, target, base)
        from service.ml.als._native import implicit_cg

        return implicit_cg(side, fixed, base, target, self.cg_steps, with_loss)

    def _conjugate_gradient(
        self,
        side: SparseRows,
        fixed: torch.Tensor,
        target: torch.Tensor,
        base: torch.Tensor,
        with_loss: bool,
    ) -> float:
        extra = side.values
        # sampled_addmm reads its dense right factor as (k, n); one contiguous copy per half-sweep
        fixed_t = fixed.T.contiguous()

        def product(v: torch.Tensor) -> torch.Tensor:
            # v (YᵀY + λI) + Σ_j (c_j - 1)(y_j · v) y_j: the sampled dots, rescaled in place,
            # are the sparse factor of one fused add-and-multiply
            dots = side.sampled_dots(v, fixed_t)
            dots.values().mul_(extra)
            return torch.addmm(v @ base, dots, fixed)

        # b - A x in one sparse product: Σ_j (c_j - (c_j - 1) s_j) y_j - x (YᵀY + λI)
        start = side.sampled_dots(target, fixed_t)
        start_scores = start.values()
        start_base = target @ base
        loss = 0.0
        if with_loss:
            # the objective at the starting `target` (after the other side's half-sweep): it
            # reuses the start's scores, where the solution's would cost one more pass over nnz
            total = (start_base * target).sum().double()
            total += ((extra + 1.0) * (1.0 - start_scores).square() - start_scores.square()).sum()
            loss = float(total)
        start_scores.mul_(extra).neg_().add_(extra).add_(1.0)
        residual = torch.addmm(start_base, start, fixed, beta=-1.0)
        conjugate_gradient(product, residual, target, self.cg_steps)
        return loss

    def _cholesky(
        self, plan: RowPlan, fixed: torch.Tensor, target: torch.Tensor, base: torch.Tensor
    ) -> float:
        loss = torch.zeros((), device=fixed.device, dtype=torch.float64)
        extended = with_zero_row(fixed)
        for chunk in plan.chunks:
            gathered = gather_factors(extended, chunk)
            extra = chunk.values * chunk.mask
            solution = cholesky_solve(
                base + weighted_gram(gathered, extra),
                weighted_sum(gathered, extra + chunk.mask),
            )
            target[chunk.rows] = solution
            # Σ_all s² + λ‖x‖² = xᵀ(YᵀY + λI)x; observed entries add c(1 - s)² - s²
            scores = row_dot(gathered, solution)
            observed = (extra + 1.0) * (1.0 - scores) ** 2 - scores * scores
            loss += ((solution @ base) * solution).sum().double()
            loss += (observed * chunk.mask).sum().double()
        return float(loss)
