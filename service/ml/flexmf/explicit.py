"""`flexmf-explicit`: biased matrix factorization of explicit ratings, trained in minibatches."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from service.ml.base import ProgressCallback, UserVector
from service.ml.data import IndexArray, Interactions, ValueArray
from service.ml.device import resolve_device, seeded_generator
from service.ml.flexmf.config import FlexMFExplicitConfig
from service.ml.flexmf.foldin import ridge_solve, ridge_solve_grid, sigmoid_range_solve
from service.ml.flexmf.model import FlexMFParameters
from service.ml.flexmf.scoring import FlexMFScorer, known_history
from service.ml.flexmf.training import FlexMFTrainer
from service.ml.rating_range import into_range, output_range

CALIBRATION_USERS = 128
CALIBRATION_GRID = tuple(10.0**e for e in np.arange(-2.0, 2.01, 0.25))


class FlexMFExplicit(FlexMFScorer[FlexMFExplicitConfig]):
    """Biased MF on residuals from the global mean, optionally sigmoid-clamped to the range."""

    name: ClassVar[str] = "flexmf-explicit"
    config_type: ClassVar[type[FlexMFExplicitConfig]] = FlexMFExplicitConfig
    explicit: ClassVar[bool] = True

    def __init__(self, config: FlexMFExplicitConfig | None = None) -> None:
        super().__init__(config)
        self.rating_low: float | None = None
        self.rating_high: float | None = None
        self.fold_in_reg: float = 1.0
        self.rating_max: float = 5.0
        self.best_epoch: int = 0
        self.losses: list[float] = []

    # ----- output transform ------------------------------------------------------------------
    def transform_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Scaled sigmoid into the rating range when `sigmoid_range` is set, else identity."""
        return into_range(raw, self.rating_low, self.rating_high)

    def _setup_range(self, values: torch.Tensor) -> None:
        config = self.config
        self.rating_max = float(values.max())
        self.rating_low, self.rating_high, offset = output_range(
            values,
            sigmoid_range=config.sigmoid_range,
            rating_range=config.rating_range,
            range_margin=config.range_margin,
        )
        self.global_bias = offset if config.global_offset else 0.0

    # ----- training --------------------------------------------------------------------------
    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Train on explicit ratings; `validation` ratings drive early stopping."""
        if data.values is None:
            raise ValueError("flexmf-explicit needs rating values")
        config = self.config
        device = resolve_device(config.device)
        init_gen = torch.Generator().manual_seed(config.seed)
        params = FlexMFParameters(
            data.n_users,
            data.n_items,
            config.embedding_size,
            user_bias=True,
            item_bias=True,
            init_scale=config.init_scale,
            generator=init_gen,
        )
        params.zero_unseen(
            torch.as_tensor(np.bincount(data.users, minlength=data.n_users)),
            torch.as_tensor(np.bincount(data.items, minlength=data.n_items)),
        )
        params = params.to(device)
        users = torch.as_tensor(data.users, device=device)
        items = torch.as_tensor(data.items, device=device)
        values = torch.as_tensor(data.values, device=device)
        self._setup_range(values)
        self.user_ids, self.item_ids, self.device = data.user_ids, data.item_ids, device

        trainer = _ExplicitTrainer(
            self, params, users, items, values, seeded_generator(config.seed, device)
        )
        validate = None
        if validation is not None and len(validation) and validation.values is not None:
            v_users = torch.as_tensor(validation.users, device=device)
            v_items = torch.as_tensor(validation.items, device=device)
            v_values = torch.as_tensor(validation.values, device=device)

            def validate() -> float:
                with torch.inference_mode():
                    pred = self.transform_scores(params(v_users, v_items) + self.global_bias)
                    return float(torch.sqrt(F.mse_loss(pred, v_values)))

        self.losses = trainer.fit(progress, validate, config.early_stopping_patience)
        self.best_epoch = trainer.best_epoch
        self._store(params)
        if config.fold_in_regularization is not None:
            self.fold_in_reg = config.fold_in_regularization
        else:
            self.fold_in_reg = self._calibrate_fold_in(data)

    def predict_raw(
        self, params: FlexMFParameters, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ratings of aligned user/item indices from training parameters."""
        return self.transform_scores(params(users, items) + self.global_bias)

    # ----- fold-in ---------------------------------------------------------------------------
    def _solve(
        self, items: torch.Tensor, ratings: torch.Tensor, reg: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        factors = self._tensor("item_factors")[items]
        offsets = self._tensor("item_bias")[items] + self.global_bias
        lam = reg * len(items)
        if self.rating_low is not None and self.rating_high is not None:
            return sigmoid_range_solve(
                factors, offsets, ratings, self.rating_low, self.rating_high, lam
            )
        return ridge_solve(factors, ratings - offsets, lam)

    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """Ridge-regression user vector and bias for ratings of known items (closed form)."""
        k_items, k_ratings = known_history(items, ratings, self.n_items)
        factors = self._tensor("item_factors")
        if len(k_items) == 0:
            return UserVector(torch.zeros_like(factors[0]), 0.0, True)
        index = torch.as_tensor(k_items, device=factors.device)
        if k_ratings is None:
            # a bare history reads as "liked": the top of the training ratings
            target = torch.full((len(k_items),), self.rating_max, device=factors.device)
        else:
            target = torch.as_tensor(k_ratings, device=factors.device)
        x, b = self._solve(index, target, self.fold_in_reg)
        return UserVector(x, float(b), True)

    def _calibrate_fold_in(self, data: Interactions) -> float:
        """The per-rating ridge strength whose fold-ins best reproduce trained users' scores."""
        assert data.values is not None
        csr = data.user_csr()
        counts = csr.counts()
        candidates = np.flatnonzero(counts >= 5)
        if len(candidates) == 0:
            return 1.0
        rng = np.random.default_rng(self.config.seed)
        sample = rng.choice(candidates, size=min(CALIBRATION_USERS, len(candidates)), replace=False)
        factors = self._tensor("item_factors")
        design = torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1).double()
        gram = design.T @ design / len(factors)
        grid = torch.tensor(CALIBRATION_GRID, dtype=torch.float64, device=factors.device)
        errors = torch.zeros(len(grid), dtype=torch.float64, device=factors.device)
        for user in sample:
            u_items, u_values = csr.row(int(user))
            assert u_values is not None
            index = torch.as_tensor(u_items, device=factors.device)
            target = torch.as_tensor(u_values, device=factors.device)
            trained = torch.cat(
                [self._tensor("user_factors")[user], self._tensor("user_bias")[user].reshape(1)]
            ).double()
            offsets = self._tensor("item_bias")[index] + self.global_bias
            if self.rating_low is not None and self.rating_high is not None:
                # calibrate the clamped model in logit space (where its fold-in starts)
                span = self.rating_high - self.rating_low
                unit = ((target - self.rating_low) / span).clamp(1e-3, 1 - 1e-3)
                target = torch.logit(unit)
            x, b = ridge_solve_grid(factors[index], target - offsets, grid * len(index))
            solved = torch.cat([x, b.unsqueeze(1)], dim=1).double()
            diff = solved - trained
            errors += ((diff @ gram) * diff).sum(dim=1)
        return float(grid[int(torch.argmin(errors))])

    def extra_metadata(self) -> dict[str, Any]:
        """Global bias, rating range and fold-in strength."""
        return {
            "global_bias": self.global_bias,
            "rating_low": self.rating_low,
            "rating_high": self.rating_high,
            "fold_in_regularization": self.fold_in_reg,
            "rating_max": self.rating_max,
        }

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""
        super().restore_extra_metadata(extra)
        low, high = extra.get("rating_low"), extra.get("rating_high")
        self.rating_low = None if low is None else float(low)
        self.rating_high = None if high is None else float(high)
        self.fold_in_reg = float(extra.get("fold_in_regularization", 1.0))
        self.rating_max = float(extra.get("rating_max", 5.0))


class _ExplicitTrainer(FlexMFTrainer):
    """Minibatch squared error of (clamped) predictions against ratings."""

    def __init__(
        self,
        owner: FlexMFExplicit,
        params: FlexMFParameters,
        users: torch.Tensor,
        items: torch.Tensor,
        values: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        super().__init__(params, owner.config, len(users), generator)
        self.owner = owner
        self.users, self.items, self.values = users, items, values
        config = owner.config
        n_users, n_items = params.n_users, params.n_items
        user_counts = torch.bincount(users, minlength=n_users).clamp(min=1)
        item_counts = torch.bincount(items, minlength=n_items).clamp(min=1)
        self.user_bias_weight = config.bias_regularization / user_counts
        self.item_bias_weight = config.bias_regularization / item_counts
        self.factor_user_weight = config.uniform_regularization / user_counts
        self.factor_item_weight = config.uniform_regularization / item_counts

    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean squared error plus the per-row L2 penalty when configured."""
        users, items = self.users[rows], self.items[rows]
        u_emb, u_bias = self.model.users(users, self.gather)
        i_emb, i_bias = self.model.items(items, self.gather)
        raw = (u_emb * i_emb).sum(-1) + self.owner.global_bias
        if u_bias is not None:
            raw = raw + u_bias
        if i_bias is not None:
            raw = raw + i_bias
        loss = F.mse_loss(self.owner.transform_scores(raw), self.values[rows])
        loss = loss + self.penalty(u_emb, i_emb)
        if self.config.reg_method == "L2":
            extra = self.factor_user_weight[users] * u_emb.square().sum(
                -1
            ) + self.factor_item_weight[items] * i_emb.square().sum(-1)
            if u_bias is not None:
                extra = extra + self.user_bias_weight[users] * u_bias.square()
            if i_bias is not None:
                extra = extra + self.item_bias_weight[items] * i_bias.square()
            loss = loss + extra.mean()
        return loss
