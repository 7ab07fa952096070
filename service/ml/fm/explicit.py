"""`fm-explicit`: a factorization machine over user and item features for explicit ratings."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from service.ml.base import ProgressCallback, UserVector
from service.ml.data import IndexArray, Interactions, ValueArray
from service.ml.device import seeded_generator
from service.ml.flexmf.foldin import ridge_solve, sigmoid_range_solve
from service.ml.fm.config import FMExplicitConfig
from service.ml.fm.model import DeviceRows, FMParameters, all_side_sums
from service.ml.fm.scorer import FMScorer
from service.ml.fm.training import FMTrainer
from service.ml.rating_range import into_range, output_range


class FMExplicit(FMScorer[FMExplicitConfig]):
    """Squared loss on ratings (residuals from the mean), optionally sigmoid-clamped."""

    name: ClassVar[str] = "fm-explicit"
    config_type: ClassVar[type[FMExplicitConfig]] = FMExplicitConfig
    explicit: ClassVar[bool] = True

    def __init__(self, config: FMExplicitConfig | None = None) -> None:
        super().__init__(config)
        self.rating_low: float | None = None
        self.rating_high: float | None = None
        self.rating_max: float = 5.0

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
        self.global_bias = offset

    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Train on explicit ratings and `data.features`; `validation` drives early stopping."""
        if data.values is None:
            raise ValueError("fm-explicit needs rating values")
        params, user_rows, item_rows = self._prepare(data)
        device = self.device
        users = torch.as_tensor(data.users, device=device)
        items = torch.as_tensor(data.items, device=device)
        values = torch.as_tensor(data.values, device=device)
        self._setup_range(values)
        trainer = _ExplicitTrainer(
            self, params, user_rows, item_rows, (users, items, values), seeded_generator(
                self.config.seed, device
            ),
        )  # fmt: skip
        validate = None
        if validation is not None and len(validation) and validation.values is not None:
            v_users = torch.as_tensor(validation.users, device=device)
            v_items = torch.as_tensor(validation.items, device=device)
            v_values = torch.as_tensor(validation.values, device=device)

            def validate() -> float:
                with torch.inference_mode():
                    u_emb, u_bias = all_side_sums(params.user_table, user_rows, self.n_users)
                    i_emb, i_bias = all_side_sums(params.item_table, item_rows, self.n_items)
                    raw = (u_emb[v_users] * i_emb[v_items]).sum(1)
                    raw = raw + u_bias[v_users] + i_bias[v_items] + self.global_bias
                    return float(torch.sqrt(F.mse_loss(self.transform_scores(raw), v_values)))

        self.losses = trainer.fit(progress, validate, self.config.early_stopping_patience)
        self.best_epoch = trainer.best_epoch
        self._store(params, user_rows, item_rows)

    def _fit_own(
        self, base: UserVector, items: IndexArray, ratings: ValueArray | None
    ) -> UserVector:
        """Ridge regression of the residual ratings on the items' factors (closed form)."""
        factors = self._tensor("item_factors")[torch.as_tensor(items, device=self.device)]
        offsets = (
            self._tensor("item_bias")[torch.as_tensor(items, device=self.device)]
            + self.global_bias
            + factors @ base.embedding
            + base.bias
        )
        if ratings is None:
            target = torch.full((len(items),), self.rating_max, device=factors.device)
        else:
            target = torch.as_tensor(ratings, device=factors.device)
        lam = self.config.fold_in_regularization * len(items)
        if self.rating_low is not None and self.rating_high is not None:
            x, b = sigmoid_range_solve(
                factors, offsets, target, self.rating_low, self.rating_high, lam
            )
        else:
            x, b = ridge_solve(factors, target - offsets, lam)
        return UserVector(base.embedding + x, base.bias + float(b), True)

    def extra_metadata(self) -> dict[str, Any]:
        """Shared metadata plus the rating range."""
        return {
            **super().extra_metadata(),
            "rating_low": self.rating_low,
            "rating_high": self.rating_high,
            "rating_max": self.rating_max,
        }

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""
        super().restore_extra_metadata(extra)
        low, high = extra.get("rating_low"), extra.get("rating_high")
        self.rating_low = None if low is None else float(low)
        self.rating_high = None if high is None else float(high)
        self.rating_max = float(extra.get("rating_max", 5.0))


class _ExplicitTrainer(FMTrainer):
    """Minibatch squared error of (clamped) predictions plus the per-group penalties."""

    def __init__(
        self,
        owner: FMExplicit,
        params: FMParameters,
        user_rows: DeviceRows,
        item_rows: DeviceRows,
        samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        generator: torch.Generator,
    ) -> None:
        super().__init__(params, owner.config, user_rows, item_rows, samples[:2], generator)
        self.owner = owner
        self.users, self.items, self.values = samples

    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean squared error plus the L2 penalties of the batch's features."""
        users, user_of = torch.unique(self.users[rows], return_inverse=True)
        items, item_of = torch.unique(self.items[rows], return_inverse=True)
        u_emb, u_bias, u_pen = self.side(True, users)
        i_emb, i_bias, i_pen = self.side(False, items)
        raw = (u_emb[user_of] * i_emb[item_of]).sum(1) + u_bias[user_of] + i_bias[item_of]
        predicted = self.owner.transform_scores(raw + self.owner.global_bias)
        loss = F.mse_loss(predicted, self.values[rows])
        return loss + (u_pen[user_of] + i_pen[item_of]).mean()
