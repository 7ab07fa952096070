"""The interface every recommender implements, in a shared linear factor form.

Every model scores a (user, item) pair as

    transform(global_bias + user_bias[u] + item_bias[i] + user_factors[u] · item_factors[i])

so that serving, fold-in results and similarity work the same for all models; `popular` is the
degenerate case with zero-width factors and the popularity score as item bias.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from service.ml import ranking
from service.ml.data import IndexArray, Interactions, ValueArray, Vocabulary

ARTIFACT_FORMAT = 1
CONFIG_FILE = "model.json"
TENSORS_FILE = "tensors.safetensors"
USER_IDS_FILE = "user_ids.json"
ITEM_IDS_FILE = "item_ids.json"

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True)
class TrainingProgress:
    """One progress report from `fit`: after each epoch (or ALS sweep)."""

    epoch: int
    epochs: int
    loss: float
    elapsed_s: float
    validation_rmse: float | None = None
    """RMSE on the validation slice after this epoch, where the model measures it (early
    stopping of explicit models); None otherwise."""


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class UserVector:
    """A user's position in the model's factor space: embedding (k,) and scalar bias."""

    embedding: torch.Tensor
    bias: float
    has_bias: bool


@dataclass(frozen=True)
class ItemParameters:
    """The item side of the factor form, on the model's device."""

    factors: torch.Tensor
    bias: torch.Tensor
    global_bias: float


class ModelNotFittedError(RuntimeError):
    """Raised when scoring a model that was neither fitted nor loaded."""


class Recommender(ABC, Generic[ConfigT]):
    """Base class of every model: fit, score, recommend, fold in, find similar items, persist."""

    name: ClassVar[str]
    config_type: ClassVar[type[BaseModel]]
    explicit: ClassVar[bool] = False
    """True when scores are predicted ratings (explicit feedback models)."""
    uses_features: ClassVar[bool] = False
    """True when `fit` reads `Interactions.features` and the model scores users and items
    outside its training data from their attributes and tags (cold start)."""

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config if config is not None else self.config_type()  # type: ignore[assignment]
        self.user_ids: Vocabulary = Vocabulary([])
        self.item_ids: Vocabulary = Vocabulary([])
        self.device: torch.device = torch.device("cpu")

    # ----- training -------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        data: Interactions,
        progress: ProgressCallback | None = None,
        validation: Interactions | None = None,
    ) -> None:
        """Train on interactions; their vocabularies become the model's.

        `validation` (same vocabularies) is used for early stopping where the model supports it.
        `progress` is called after each epoch; an exception it raises aborts training (cancel).
        """

    # ----- the factor form (subclasses) ------------------------------------------------------
    @abstractmethod
    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, k) and biases (B,) of trained users given by index."""

    @abstractmethod
    def item_parameters(self) -> ItemParameters:
        """Item factors (n_items, k), item biases (n_items,) and the global bias."""

    @abstractmethod
    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """Embedding (and bias) for a history the model never saw; negative indices are ignored."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor, by name, for saving."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore learned tensors written by `state_tensors`."""

    def transform_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw linear scores to output scores (identity unless the model clamps)."""
        return raw

    # ----- generic scoring -------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        """Number of trained users."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of trained items."""
        return len(self.item_ids)

    @property
    def embedding_size(self) -> int:
        """Width of the factor space (0 for `popular`)."""
        return int(self.item_parameters().factors.shape[1])

    def to(self, device: str | torch.device) -> Self:
        """Move learned tensors to a device."""
        target = torch.device(device)
        self.load_state_tensors({k: v.to(target) for k, v in self.state_tensors().items()})
        self.device = target
        return self

    def score_vectors(
        self,
        embeddings: torch.Tensor,
        biases: torch.Tensor,
        items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, m) of user vectors over the given item indices (all items when None)."""
        params = self.item_parameters()
        factors, item_bias = params.factors, params.bias
        if items is not None:
            factors, item_bias = factors[items], item_bias[items]
        raw = embeddings.to(factors.dtype) @ factors.T
        raw += item_bias.unsqueeze(0) + biases.to(factors.dtype).unsqueeze(1) + params.global_bias
        return self.transform_scores(raw)

    @torch.inference_mode()
    def score_users(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, m) of trained users (by index) over item indices (all items when None)."""
        embeddings, biases = self.user_parameters(users.to(self.device))
        return self.score_vectors(
            embeddings, biases, None if items is None else items.to(self.device)
        )

    @torch.inference_mode()
    def score_user_vector(
        self, vector: UserVector, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores (m,) of one folded-in user vector."""
        bias = torch.tensor([vector.bias], device=self.device)
        return self.score_vectors(vector.embedding.unsqueeze(0), bias, items)[0]

    def recommend(
        self,
        embeddings: torch.Tensor,
        biases: torch.Tensor,
        n: int,
        exclude: Sequence[IndexArray] | None = None,
        *,
        allowed: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-n item indices and scores (B, n') per user vector, best first, leaving out the
        `exclude`d item indices and, per row, items outside its `allowed` (m,) mask.

        This is the served ranking (`service.ml.ranking`). A row with fewer than n' items to
        offer is padded with index -1 and score -inf.
        """
        table = ranking.ItemTable.build(self)
        rows = [
            ranking.RankRow(
                n=n,
                bias=float(bias),
                excluded=ranking.excluded_indices(
                    np.asarray(exclude[row], dtype=np.int64)
                    if exclude is not None
                    else ranking.NO_ITEMS
                ),
                allowed=None if allowed is None else allowed[row],
            )
            for row, bias in enumerate(biases.tolist())
        ]
        lists = ranking.rank(table, embeddings, rows)
        width = max((len(found) for found, _ in lists), default=0)
        indices = torch.full((len(rows), width), -1, dtype=torch.int64)
        scores = torch.full((len(rows), width), -torch.inf, dtype=torch.float32)
        for row, (found, values) in enumerate(lists):
            indices[row, : len(found)] = torch.tensor(found, dtype=torch.int64)
            scores[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        return indices, scores

    def similar_items(self, item: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The n items with the highest cosine similarity of factors to `item`, itself excluded
        (the served similarity, `service.ml.ranking.similar`)."""
        if self.embedding_size == 0:
            raise ValueError(f"model {self.name!r} has no item factors for similarity")
        found, values = ranking.similar(ranking.ItemTable.build(self), item, n)
        return torch.tensor(found, dtype=torch.int64), torch.tensor(values, dtype=torch.float32)

    # ----- persistence -----------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write config JSON, id vocabularies and tensors (safetensors) into a directory."""
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": ARTIFACT_FORMAT,
            "model": self.name,
            "config": self.config.model_dump(mode="json"),
            "extra": self.extra_metadata(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (directory / USER_IDS_FILE).write_text(json.dumps(self.user_ids.ids), encoding="utf-8")
        (directory / ITEM_IDS_FILE).write_text(json.dumps(self.item_ids.ids), encoding="utf-8")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_tensors().items()}
        save_file(tensors, str(directory / TENSORS_FILE))

    def extra_metadata(self) -> dict[str, Any]:
        """Scalars a model needs besides its config and tensors (saved as JSON)."""
        return {}

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by `save` (no pickle: JSON and safetensors only)."""
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if meta.get("model") != cls.name:
            raise ValueError(f"{directory} holds model {meta.get('model')!r}, not {cls.name!r}")
        model = cls(cls.config_type.model_validate(meta["config"]))  # type: ignore[arg-type]
        model.user_ids = Vocabulary(json.loads((directory / USER_IDS_FILE).read_text("utf-8")))
        model.item_ids = Vocabulary(json.loads((directory / ITEM_IDS_FILE).read_text("utf-8")))
        model.restore_extra_metadata(meta.get("extra", {}))
        model.load_state_tensors(load_file(str(directory / TENSORS_FILE), device="cpu"))
        model.device = torch.device("cpu")
        return model


def read_model_name(directory: Path) -> str:
    """The model name recorded in a saved model directory."""
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    return str(meta["model"])


def as_index_tensor(indices: IndexArray | Sequence[int], device: torch.device) -> torch.Tensor:
    """An int64 tensor of indices on a device."""
    return torch.as_tensor(np.asarray(indices, dtype=np.int64), device=device)
