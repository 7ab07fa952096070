"""`fm-implicit`: a factorization machine over user and item features for implicit feedback,
trained against sampled negatives (logistic or BPR loss, FlexMF's samplers)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from service.ml.base import ProgressCallback, UserVector
from service.ml.data import IndexArray, Interactions, ValueArray
from service.ml.device import seeded_generator
from service.ml.flexmf.foldin import implicit_fold_in
from service.ml.flexmf.losses import logistic_loss, pairwise_loss
from service.ml.flexmf.sampling import NegativeSampler
from service.ml.fm.config import FMImplicitConfig
from service.ml.fm.model import DeviceRows, FMParameters
from service.ml.fm.scorer import FMScorer
from service.ml.fm.training import FMTrainer

FOLD_IN_SEED_OFFSET = 7919


class FMImplicit(FMScorer[FMImplicitConfig]):
    """Implicit-feedback factorization machine trained on positives against sampled negatives."""

    name: ClassVar[str] = "fm-implicit"
    config_type: ClassVar[type[FMImplicitConfig]] = FMImplicitConfig

    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Train on user-item interactions (values ignored) and `data.features`;
        `validation` is not used."""
        config = self.config
        params, user_rows, item_rows = self._prepare(data)
        self.global_bias = 0.0
        users = torch.as_tensor(data.users, device=self.device)
        items = torch.as_tensor(data.items, device=self.device)
        generator = seeded_generator(config.seed, self.device)
        sampler = NegativeSampler(
            users,
            items,
            data.n_items,
            config.negative_strategy,
            generator,
            exclude_positives=config.exclude_positives,
        )
        trainer = _ImplicitTrainer(
            params, config, user_rows, item_rows, users, items, sampler, generator
        )
        self.losses = trainer.fit(progress)
        self.best_epoch = trainer.best_epoch
        self._store(params, user_rows, item_rows)

    def _fit_own(
        self, base: UserVector, items: IndexArray, ratings: ValueArray | None
    ) -> UserVector:
        """The own vector and bias minimizing the model's loss on the history (deterministic
        Newton steps), with the features' part as a fixed offset of every item's score;
        negatives are taken as uniform over items."""
        config = self.config
        factors = self._tensor("item_factors")
        offsets = self._tensor("item_bias") + factors @ base.embedding + base.bias
        index = torch.as_tensor(np.unique(items), device=factors.device)
        x, b = implicit_fold_in(
            factors,
            offsets,
            index,
            torch.ones(self.n_items, device=factors.device),
            loss=config.loss,
            fit_bias=True,
            positive_weight=1.0,
            negative_count=config.negative_count,
            regularization=config.fold_in_regularization,
            steps=config.fold_in_steps,
            generator=seeded_generator(config.seed + FOLD_IN_SEED_OFFSET, factors.device),
        )
        return UserVector(base.embedding + x, base.bias + float(b), True)


class _ImplicitTrainer(FMTrainer):
    """One minibatch: score positives, draw and score negatives, apply the chosen loss."""

    def __init__(
        self,
        params: FMParameters,
        config: FMImplicitConfig,
        user_rows: DeviceRows,
        item_rows: DeviceRows,
        users: torch.Tensor,
        items: torch.Tensor,
        sampler: NegativeSampler,
        generator: torch.Generator,
    ) -> None:
        super().__init__(params, config, user_rows, item_rows, (users, items), generator)
        self.implicit_config = config
        self.users, self.items, self.sampler = users, items, sampler

    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """The configured loss of a batch of positives and their negatives, plus penalties."""
        config = self.implicit_config
        batch_users = self.users[rows]
        negatives = self.sampler.sample(batch_users, config.negative_count)
        candidates = torch.cat([self.items[rows].unsqueeze(1), negatives], 1)
        users, user_of = torch.unique(batch_users, return_inverse=True)
        items, item_of = torch.unique(candidates, return_inverse=True)
        u_emb, u_bias, u_pen = self.side(True, users)
        i_emb, i_bias, i_pen = self.side(False, items)
        scores = (u_emb[user_of].unsqueeze(1) * i_emb[item_of]).sum(-1) + i_bias[item_of]
        scores = scores + u_bias[user_of].unsqueeze(1)
        positive, negative = scores[:, 0], scores[:, 1:]
        if config.loss == "logistic":
            loss = logistic_loss(positive, negative)
        else:
            loss = pairwise_loss(positive, negative)
        return loss + u_pen[user_of].mean() + i_pen[item_of].sum(1).mean()
