"""The popularity baseline, also the service's cold-start fallback."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from service.ml.base import (
    ItemParameters,
    ModelNotFittedError,
    ProgressCallback,
    Recommender,
    TrainingProgress,
    UserVector,
)
from service.ml.data import IndexArray, Interactions, ValueArray
from service.ml.device import resolve_device


class PopularConfig(BaseModel):
    """Hyper-parameters of `popular`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: Literal["count", "fraction"] = "count"
    """Item score: the number of interactions, or that number over the number of users."""

    min_rating: float | None = Field(default=None)
    """Count only interactions rated at least this (None: count every interaction)."""

    device: str = "auto"
    """Device of the score vector: "auto" (CUDA when present, else CPU), "cpu", "cuda", …"""

    seed: int = 42
    """Unused (the model is deterministic); kept so every model config has a seed."""


class Popular(Recommender[PopularConfig]):
    """Scores every item by its popularity; zero-width factors, so every user gets the same list."""

    name: ClassVar[str] = "popular"
    config_type: ClassVar[type[PopularConfig]] = PopularConfig
    explicit: ClassVar[bool] = False

    def __init__(self, config: PopularConfig | None = None) -> None:
        super().__init__(config)
        self._scores: torch.Tensor | None = None

    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Count each item's interactions (one epoch)."""
        started = time.perf_counter()
        items = data.items
        if self.config.min_rating is not None and data.values is not None:
            items = items[data.values >= self.config.min_rating]
        counts = np.bincount(items, minlength=data.n_items).astype(np.float32)
        if self.config.score == "fraction":
            counts /= max(data.n_users, 1)
        self.device = resolve_device(self.config.device)
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        self._scores = torch.as_tensor(counts, device=self.device)
        if progress is not None:
            progress(TrainingProgress(1, 1, 0.0, time.perf_counter() - started))

    def _fitted(self) -> torch.Tensor:
        if self._scores is None:
            raise ModelNotFittedError("popular is not fitted")
        return self._scores

    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty embeddings (B, 0) and zero biases."""
        scores = self._fitted()
        count = users.shape[0]
        return torch.zeros((count, 0), device=scores.device), torch.zeros(
            count, device=scores.device
        )

    def item_parameters(self) -> ItemParameters:
        """Zero-width factors; the popularity score is the item bias."""
        scores = self._fitted()
        factors = torch.zeros((scores.shape[0], 0), device=scores.device)
        return ItemParameters(factors=factors, bias=scores, global_bias=0.0)

    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """An empty embedding: popularity does not depend on the history."""
        scores = self._fitted()
        return UserVector(torch.zeros(0, device=scores.device), 0.0, has_bias=False)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The item score vector."""
        return {"item_scores": self._fitted()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned."""
        self._scores = tensors["item_scores"]
