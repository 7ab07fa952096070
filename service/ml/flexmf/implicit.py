"""`flexmf-implicit`: matrix factorization for implicit feedback with sampled negatives
(logistic, BPR or WARP loss; uniform, popular or misranked negatives)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from service.ml.base import ProgressCallback, UserVector
from service.ml.data import IndexArray, Interactions, ValueArray
from service.ml.device import resolve_device, seeded_generator
from service.ml.flexmf.config import FlexMFImplicitConfig
from service.ml.flexmf.cpu_step import CompiledImplicitStep, compiled_step_applies
from service.ml.flexmf.foldin import implicit_fold_in, one_thread
from service.ml.flexmf.foldin_grid import implicit_fold_in_grid
from service.ml.flexmf.implicit_step import batch_scores, row_gradients, score_gradients
from service.ml.flexmf.losses import logistic_loss, pairwise_loss, warp_loss
from service.ml.flexmf.model import FlexMFParameters
from service.ml.flexmf.optim import RowSparseAdam
from service.ml.flexmf.sampling import NegativeSampler, SamplerStats, rank_weight
from service.ml.flexmf.scoring import FlexMFScorer, known_history
from service.ml.flexmf.training import FlexMFTrainer, lr_factor

CALIBRATION_USERS = 16
CALIBRATION_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
CALIBRATION_NEGATIVES = 2048
"""Negatives of a calibration fold-in (a seeded subsample on large catalogs, to keep it cheap)."""
FOLD_IN_SEED_OFFSET = 7919


class FlexMFImplicit(FlexMFScorer[FlexMFImplicitConfig]):
    """Implicit-feedback MF trained on positives against sampled negatives."""

    name: ClassVar[str] = "flexmf-implicit"
    config_type: ClassVar[type[FlexMFImplicitConfig]] = FlexMFImplicitConfig

    def __init__(self, config: FlexMFImplicitConfig | None = None) -> None:
        super().__init__(config)
        self.fold_in_reg: float = 1.0
        self.losses: list[float] = []
        self.sampler_stats: list[SamplerStats] = []
        """Misranked-sampler statistics per epoch (empty for other strategies)."""
        self._negative_weights: torch.Tensor | None = None

    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Train on user-item interactions (values are ignored); `validation` is not used."""
        config = self.config
        device = resolve_device(config.device)
        params = FlexMFParameters(
            data.n_users,
            data.n_items,
            config.embedding_size,
            user_bias=config.selected_user_bias(),
            item_bias=config.item_bias,
            init_scale=config.init_scale,
            generator=torch.Generator().manual_seed(config.seed),
        )
        item_counts = np.bincount(data.items, minlength=data.n_items)
        params.zero_unseen(
            torch.as_tensor(np.bincount(data.users, minlength=data.n_users)),
            torch.as_tensor(item_counts),
        )
        params = params.to(device)
        self.user_ids, self.item_ids, self.device = data.user_ids, data.item_ids, device
        self.global_bias = 0.0
        users = torch.as_tensor(data.users, device=device)
        items = torch.as_tensor(data.items, device=device)
        generator = seeded_generator(config.seed, device)
        compiled = compiled_step_applies(config, device)
        sampler = NegativeSampler(
            users,
            items,
            data.n_items,
            config.selected_negative_strategy(),
            generator,
            exclude_positives=config.exclude_positives,
            # on the CPU, positives looked up by compiled code (a bit set, or the users' rows)
            user_items=data.user_csr() if compiled else None,
        )
        trainer = _ImplicitTrainer(params, config, users, items, sampler, generator)
        self.losses = trainer.fit(progress)
        self.sampler_stats = trainer.sampler_stats
        self._store(params)
        self._negative_weights = self._sampling_weights(item_counts)
        if config.fold_in_regularization is not None:
            self.fold_in_reg = config.fold_in_regularization
        else:
            self.fold_in_reg = self._calibrate_fold_in(data)

    def _sampling_weights(self, item_counts: IndexArray) -> torch.Tensor:
        """Relative probability of each item as a sampled negative (for the fold-in)."""
        if self.config.selected_negative_strategy() == "popular":
            weights = torch.as_tensor(item_counts, dtype=torch.float32)
        else:
            weights = torch.ones(len(item_counts))
        return weights.to(self.device)

    # ----- fold-in ---------------------------------------------------------------------------
    def _fold_weights(self) -> torch.Tensor:
        """The negatives' sampling weights of a fold-in (uniform on a loaded model without them)."""
        weights = self._negative_weights
        return torch.ones(self.n_items, device=self.device) if weights is None else weights

    def _fold_options(self) -> dict[str, Any]:
        """The options every fold-in of this model shares (loss, bias, weights, steps)."""
        config = self.config
        return {
            "loss": config.loss,
            "fit_bias": config.selected_user_bias(),
            "positive_weight": config.positive_weight,
            "negative_count": config.negative_count,
            "steps": config.fold_in_steps,
        }

    def _fold(
        self, items: torch.Tensor, reg: float, max_negatives: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return implicit_fold_in(
            self._tensor("item_factors"),
            self._tensor("item_bias"),
            items,
            self._fold_weights(),
            regularization=reg,
            generator=seeded_generator(self.config.seed + FOLD_IN_SEED_OFFSET, self.device),
            max_negatives=max_negatives,
            **self._fold_options(),
        )

    def _fold_grid(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_fold` of a calibration history at every strength of the grid: x (G, k), b (G,)."""
        return implicit_fold_in_grid(
            self._tensor("item_factors"),
            self._tensor("item_bias"),
            items,
            self._fold_weights(),
            regularizations=CALIBRATION_GRID,
            seed=self.config.seed + FOLD_IN_SEED_OFFSET,
            max_negatives=CALIBRATION_NEGATIVES,
            **self._fold_options(),
        )

    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """User vector minimizing the model's own loss on a history (ratings are ignored)."""
        k_items, _ = known_history(items, ratings, self.n_items)
        factors = self._tensor("item_factors")
        has_bias = self.config.selected_user_bias()
        if len(k_items) == 0:
            return UserVector(torch.zeros_like(factors[0]), 0.0, has_bias)
        index = torch.as_tensor(np.unique(k_items), device=factors.device)
        x, b = self._fold(index, self.fold_in_reg)
        return UserVector(x, float(b), has_bias)

    def _calibrate_fold_in(self, data: Interactions) -> float:
        """The fold-in strength whose fold-ins best reproduce trained users' top-10 lists."""
        overlap = self._calibration_overlaps(data)
        return 1.0 if overlap is None else float(CALIBRATION_GRID[int(np.argmax(overlap))])

    def _calibration_overlaps(self, data: Interactions) -> npt.NDArray[np.int64] | None:
        """Per strength of the grid, the top-10 items that the fold-ins of a seeded sample of
        trained users share with their trained vectors (None without users to sample)."""
        csr = data.user_csr()
        candidates = np.flatnonzero(csr.counts() >= 5)
        if len(candidates) == 0:
            return None
        rng = np.random.default_rng(self.config.seed)
        sample = rng.choice(candidates, size=min(CALIBRATION_USERS, len(candidates)), replace=False)
        n = min(10, self.n_items)

        def overlaps(user: int) -> npt.NDArray[np.int64]:
            """Shared top-n items of the user's trained and folded-in vectors, per strength."""
            u_items, _ = csr.row(user)
            index = torch.as_tensor(np.unique(u_items), device=self.device)
            u = torch.as_tensor([user], device=self.device)
            trained = set(torch.topk(self.score_users(u)[0], n).indices.tolist())
            xs, bs = self._fold_grid(index)
            shared = np.zeros(len(CALIBRATION_GRID), dtype=np.int64)
            for g in range(len(CALIBRATION_GRID)):
                scores = self.score_user_vector(UserVector(xs[g], float(bs[g]), True))
                shared[g] = len(trained & set(torch.topk(scores, n).indices.tolist()))
            return shared

        # users on parallel Python threads, each product on one torch thread (small products:
        # a second intra-op thread would only add barriers); the same sums in any order
        workers = torch.get_num_threads() if self.device.type == "cpu" else 1
        with one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
            per_user = list(pool.map(overlaps, (int(user) for user in sample)))
        total: npt.NDArray[np.int64] = np.stack(per_user).sum(axis=0)
        return total

    def extra_metadata(self) -> dict[str, Any]:
        """Fold-in strength and negative sampling weights' kind."""
        return {"global_bias": self.global_bias, "fold_in_regularization": self.fold_in_reg}

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""
        super().restore_extra_metadata(extra)
        self.fold_in_reg = float(extra.get("fold_in_regularization", 1.0))


class _ImplicitTrainer(FlexMFTrainer):
    """One minibatch: score positives, draw and score negatives, apply the chosen loss."""

    def __init__(
        self,
        params: FlexMFParameters,
        config: FlexMFImplicitConfig,
        users: torch.Tensor,
        items: torch.Tensor,
        sampler: NegativeSampler,
        generator: torch.Generator,
    ) -> None:
        super().__init__(params, config, len(users), generator)
        self.implicit_config = config
        self.users, self.items, self.sampler = users, items, sampler
        self.misranked = config.selected_negative_strategy() == "misranked"
        self.sampler_stats: list[SamplerStats] = []
        self.compiled: CompiledImplicitStep | None = None
        if compiled_step_applies(config, self.device) and isinstance(self.optimizer, RowSparseAdam):
            self.compiled = CompiledImplicitStep(
                params, config, users, items, sampler, self.optimizer
            )

    def run_epoch(self) -> float:
        """One pass over the shuffled positives (through the compiled step where it applies)."""
        if self.compiled is None:
            return super().run_epoch()
        rate = self.config.learning_rate * lr_factor(self.config, self.epochs_trained)
        order = torch.randperm(self.n_samples, generator=self.generator)
        losses = self.compiled.train(order, rate)
        self.epochs_trained += 1
        self.epoch_finished()
        return sum(losses) / max(len(losses), 1)

    @torch.no_grad()
    def train_step(self, rows: torch.Tensor) -> torch.Tensor:
        """One minibatch update; with the row-sparse Adam ("L2"), by the losses' closed-form
        gradients (`implicit_step`), otherwise through autograd (`train_batch`)."""
        optimizer = self.optimizer
        if not isinstance(optimizer, RowSparseAdam):
            with torch.enable_grad():
                return super().train_step(rows)
        config = self.implicit_config
        count = config.negative_count
        model = self.model
        k = model.embedding_size
        users, positives = self.users[rows], self.items[rows]
        user_rows = model.user_table.index_select(0, users)
        weights: torch.Tensor | None = None
        if self.misranked:
            negatives, weights = self._misranked(users, user_rows[:, :k], positives, count)
        else:
            negatives = self.sampler.sample(users, count)
        item_index = torch.cat([positives.unsqueeze(1), negatives], 1).view(-1)
        item_rows = model.item_table.index_select(0, item_index).view(len(rows), count + 1, -1)
        biases = (model.has_user_bias, model.has_item_bias)
        scores = batch_scores(user_rows, item_rows, k, *biases)
        loss, score_grad = score_gradients(config.loss, scores, config.positive_weight, weights)
        strength = config.regularization if config.reg_method == "L2" else 0.0
        user_grad, item_grad = row_gradients(user_rows, item_rows, score_grad, k, *biases, strength)
        loss = loss + self.penalty(
            user_rows, item_rows[:, 0], item_rows[:, 1:].reshape(-1, item_rows.shape[2])
        )
        optimizer.zero_grad()
        optimizer.accumulate(model.user_table, users, user_grad)
        optimizer.accumulate(model.item_table, item_index, item_grad.view(len(item_index), -1))
        optimizer.step()
        return loss

    def train_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """The configured loss of a batch of positives and their negatives (autograd)."""
        config = self.implicit_config
        count = config.negative_count
        users, positives = self.users[rows], self.items[rows]
        u_emb, u_bias = self.model.users(users, self.gather)
        weights: torch.Tensor | None = None
        if self.misranked:
            negatives, weights = self._misranked(users, u_emb, positives, count)
        else:
            negatives = self.sampler.sample(users, count)
        # one lookup of positives and negatives together: a single gradient scatter per table
        i_emb, i_bias = self.model.items(
            torch.cat([positives.unsqueeze(1), negatives], 1), self.gather
        )
        scores = (u_emb.unsqueeze(1) * i_emb).sum(-1)
        if i_bias is not None:
            scores = scores + i_bias
        pos_score, neg_score = scores[:, 0], scores[:, 1:]
        if u_bias is not None:
            pos_score = pos_score + u_bias
            neg_score = neg_score + u_bias.unsqueeze(1)
        if config.loss == "logistic":
            loss = logistic_loss(pos_score, neg_score, config.positive_weight)
        elif config.loss == "pairwise":
            loss = pairwise_loss(pos_score, neg_score)
        else:
            assert weights is not None
            loss = warp_loss(pos_score, neg_score, weights)
        k = u_emb.shape[1]
        pos_bias = None if i_bias is None else i_bias[:, 0]
        neg_bias = None if i_bias is None else i_bias[:, 1:].reshape(-1)
        penalty = self.penalty(
            u_emb, i_emb[:, 0], i_emb[:, 1:].reshape(-1, k), u_bias, pos_bias, neg_bias
        )
        return loss + penalty

    def _misranked(
        self, users: torch.Tensor, u_emb: torch.Tensor, positives: torch.Tensor, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Misranked negatives (B, count) and WARP rank weights (B, count)."""
        item_bias = self.model.item_bias_or_none()
        with torch.no_grad():
            pos_item_score = (u_emb * self.model.item_factors[positives]).sum(-1)
            if item_bias is not None:
                pos_item_score += item_bias[positives]
        if count > 1:
            users = users.repeat_interleave(count)
            u_emb = u_emb.repeat_interleave(count, dim=0)
            pos_item_score = pos_item_score.repeat_interleave(count)
        negatives, draws, found = self.sampler.misranked(
            users,
            u_emb.detach(),
            pos_item_score.detach(),
            self.model.item_factors,
            item_bias,
            self.implicit_config.margin,
            self.implicit_config.max_draws,
        )
        weights = rank_weight(self.sampler.n_items, draws) * found
        self.sampler.record(draws, found, weights)
        return negatives.view(-1, count), weights.view(-1, count)

    def epoch_finished(self) -> None:
        """Collect the misranked sampler's statistics of the epoch."""
        if self.misranked:
            self.sampler_stats.append(self.sampler.take_stats())
