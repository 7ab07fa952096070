"""State shared by both FlexMF models after training: stored tensors in the factor form."""

from __future__ import annotations

from abc import ABC
from typing import Any, TypeVar

import numpy as np
import torch

from service.ml.base import ItemParameters, ModelNotFittedError, Recommender
from service.ml.data import IndexArray, ValueArray
from service.ml.flexmf.config import FlexMFConfigBase
from service.ml.flexmf.model import FlexMFParameters

ConfigT = TypeVar("ConfigT", bound=FlexMFConfigBase)

TENSOR_NAMES = ("user_factors", "item_factors", "user_bias", "item_bias")


class FlexMFScorer(Recommender[ConfigT], ABC):
    """Holds trained FlexMF tensors and serves them in the shared linear factor form."""

    def __init__(self, config: ConfigT | None = None) -> None:
        super().__init__(config)
        self._tensors: dict[str, torch.Tensor] = {}
        self.global_bias: float = 0.0

    def _tensor(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelNotFittedError(f"model {self.name!r} is neither fitted nor loaded") from None

    def _store(self, params: FlexMFParameters) -> None:
        """Keep the trained parameters as plain tensors."""
        self._tensors = {
            "user_factors": params.user_factors().clone(memory_format=torch.contiguous_format),
            "item_factors": params.item_factors.clone(memory_format=torch.contiguous_format),
            "user_bias": params.user_bias_vector().clone(memory_format=torch.contiguous_format),
            "item_bias": params.item_bias_vector().clone(memory_format=torch.contiguous_format),
        }

    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, k) and biases (B,) of trained users given by index."""
        return self._tensor("user_factors")[users], self._tensor("user_bias")[users]

    def item_parameters(self) -> ItemParameters:
        """Item factors (n_items, k), item biases (n_items,) and the global bias."""
        return ItemParameters(
            factors=self._tensor("item_factors"),
            bias=self._tensor("item_bias"),
            global_bias=self.global_bias,
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor, by name, for saving."""
        return {name: self._tensor(name) for name in TENSOR_NAMES}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore learned tensors written by `state_tensors`."""
        missing = [name for name in TENSOR_NAMES if name not in tensors]
        if missing:
            raise ValueError(f"missing tensors {missing} for model {self.name!r}")
        self._tensors = {name: tensors[name] for name in TENSOR_NAMES}
        self.device = tensors["item_factors"].device

    def extra_metadata(self) -> dict[str, Any]:
        """The global bias (JSON scalars beside config and tensors)."""
        return {"global_bias": self.global_bias}

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""
        self.global_bias = float(extra.get("global_bias", 0.0))


def known_history(
    items: IndexArray, ratings: ValueArray | None, n_items: int
) -> tuple[IndexArray, ValueArray | None]:
    """The history restricted to known item indices (negative or out-of-range ones dropped)."""
    items = np.asarray(items, dtype=np.int64)
    keep = (items >= 0) & (items < n_items)
    kept_ratings = None if ratings is None else np.asarray(ratings, dtype=np.float32)[keep]
    return items[keep], kept_ratings
