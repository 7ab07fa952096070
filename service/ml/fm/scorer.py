"""State shared by both factorization machines: feature layout, training rows, the factor form
of trained users and items, features-only vectors of cold users and items, persistence."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from service.ml.base import ItemParameters, ModelNotFittedError, Recommender, UserVector
from service.ml.data import CSR, IndexArray, Interactions, ValueArray
from service.ml.device import resolve_device
from service.ml.features import (
    Attributes,
    FeatureData,
    FeatureEncoder,
    FeatureSelection,
    SparseRows,
)
from service.ml.flexmf.scoring import known_history
from service.ml.fm.config import FMConfigBase
from service.ml.fm.model import (
    DeviceRows,
    FMParameters,
    SideLayout,
    all_side_sums,
    hstack_rows,
    side_sums,
)

ConfigT = TypeVar("ConfigT", bound=FMConfigBase)

TENSOR_NAMES = (
    "user_table",
    "item_table",
    "user_factors",
    "user_bias",
    "item_factors",
    "item_bias",
)


def _identity_rows(n: int) -> SparseRows:
    return SparseRows(
        indptr=np.arange(n + 1, dtype=np.int64),
        indices=np.arange(n, dtype=np.int64),
        values=np.ones(n, dtype=np.float32),
    )


def implicit_rows(csr: CSR) -> SparseRows:
    """Each row's columns (a user's items, an item's users), valued 1/sqrt(their number)."""
    counts = csr.counts()
    scale = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
    return SparseRows(
        indptr=csr.indptr, indices=csr.indices, values=np.repeat(scale, counts).astype(np.float32)
    )


class FMScorer(Recommender[ConfigT], ABC):
    """Holds a trained factorization machine and serves it in the shared factor form."""

    uses_features: ClassVar[bool] = True

    def __init__(self, config: ConfigT | None = None) -> None:
        super().__init__(config)
        self._tensors: dict[str, torch.Tensor] = {}
        self.global_bias: float = 0.0
        self.encoder = FeatureEncoder.empty()
        self.user_layout = SideLayout(0, 0, 0)
        self.item_layout = SideLayout(0, 0, 0)
        self.best_epoch = 0
        self.losses: list[float] = []

    def _tensor(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelNotFittedError(f"model {self.name!r} is neither fitted nor loaded") from None

    # ----- training setup --------------------------------------------------------------------
    def _selection(self) -> FeatureSelection:
        config = self.config
        update: dict[str, Any] = {}
        if not config.user_features:
            update["user_attributes"] = []
        if not config.item_features:
            update.update(item_attributes=[], item_tags=[])
        return config.features.model_copy(update=update)

    def _prepare(self, data: Interactions) -> tuple[FMParameters, DeviceRows, DeviceRows]:
        """Fit the feature encoder and layouts; initial parameters and training rows on the
        training device."""
        config = self.config
        self.device = resolve_device(config.device)
        self.encoder = FeatureEncoder.fit(data.features, self._selection())
        self.user_layout = SideLayout(
            data.n_users if config.user_id else 0,
            self.encoder.user.size,
            data.n_items if config.implicit_feedback else 0,
        )
        self.item_layout = SideLayout(
            data.n_items if config.item_id else 0,
            self.encoder.item.size,
            data.n_users if config.item_implicit_feedback else 0,
        )
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        user_parts = [
            (self.encoder.user_rows(data.features, data.user_ids.ids), self.user_layout.ids)
        ]
        if config.user_id:
            user_parts.append((_identity_rows(data.n_users), 0))
        if config.implicit_feedback:
            user_parts.append((implicit_rows(data.user_csr()), self.user_layout.implicit_offset))
        item_parts = [
            (self.encoder.item_rows(data.features, data.item_ids.ids), self.item_layout.ids)
        ]
        if config.item_id:
            item_parts.append((_identity_rows(data.n_items), 0))
        if config.item_implicit_feedback:
            item_parts.append((implicit_rows(data.item_csr()), self.item_layout.implicit_offset))
        user_rows = hstack_rows(user_parts, data.n_users)
        item_rows = hstack_rows(item_parts, data.n_items)
        params = FMParameters(
            self.user_layout,
            self.item_layout,
            config.embedding_size,
            config.init_scale,
            torch.Generator().manual_seed(config.seed),
        )
        # features that no trained interaction reaches keep zero (not random) parameters
        active_users = np.bincount(data.users, minlength=data.n_users) > 0
        active_items = np.bincount(data.items, minlength=data.n_items) > 0
        params.zero_rows(
            torch.as_tensor(_unreached(user_rows, active_users, self.user_layout.size)),
            torch.as_tensor(_unreached(item_rows, active_items, self.item_layout.size)),
        )
        params = params.to(self.device)
        return params, DeviceRows.of(user_rows, self.device), DeviceRows.of(item_rows, self.device)

    def _store(self, params: FMParameters, user_rows: DeviceRows, item_rows: DeviceRows) -> None:
        """Keep the tables and the factor form of every trained user and item."""
        user_table = params.user_table.detach().clone()
        item_table = params.item_table.detach().clone()
        user_factors, user_bias = all_side_sums(user_table, user_rows, self.n_users)
        item_factors, item_bias = all_side_sums(item_table, item_rows, self.n_items)
        self._tensors = {
            "user_table": user_table,
            "item_table": item_table,
            "user_factors": user_factors.contiguous(),
            "user_bias": user_bias.contiguous(),
            "item_factors": item_factors.contiguous(),
            "item_bias": item_bias.contiguous(),
        }

    # ----- the factor form -------------------------------------------------------------------
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

    # ----- features of users and items outside the training data -------------------------------
    def _side_vector(
        self, table: torch.Tensor, indices: list[int], values: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64, device=table.device)
        value = torch.as_tensor(values, dtype=table.dtype, device=table.device)
        segment = torch.zeros(len(indices), dtype=torch.int64, device=table.device)
        embedding, bias = side_sums(table[index], value, segment, 1)
        return embedding[0], bias[0]

    @torch.inference_mode()
    def user_feature_vector(
        self, attributes: Attributes | None, items: IndexArray | None = None
    ) -> UserVector:
        """The user side's sum over a user's attribute features and (with implicit feedback)
        their known items, without any user-id part: a new user's vector before fold-in."""
        indices, values = self.encoder.encode_user(attributes)
        indices = [self.user_layout.feature_offset + i for i in indices]
        if self.user_layout.implicit and items is not None:
            known = np.unique(known_history(items, None, self.n_items)[0])
            indices += (known + self.user_layout.implicit_offset).tolist()
            values += [1.0 / float(np.sqrt(len(known)))] * len(known)
        embedding, bias = self._side_vector(self._tensor("user_table"), indices, values)
        return UserVector(embedding, float(bias), True)

    def cold_user_vector(self, attributes: Attributes | None) -> UserVector:
        """The vector of a user known only by attributes (no ratings): scores through
        `score_user_vector` / `recommend` like any folded-in user."""
        return self.user_feature_vector(attributes)

    @torch.inference_mode()
    def cold_item_parameters(
        self, features: FeatureData, item_ids: Sequence[str]
    ) -> ItemParameters:
        """Factors (m, k) and biases (m,) of items from their tags and attributes alone (no
        item-id part): for items created after training. Rows line up with `item_ids`."""
        table = self._tensor("item_table")
        rows = self.encoder.item_rows(features, item_ids)
        shifted = dataclasses.replace(rows, indices=rows.indices + self.item_layout.feature_offset)
        factors, bias = all_side_sums(table, DeviceRows.of(shifted, table.device), len(item_ids))
        return ItemParameters(factors=factors, bias=bias, global_bias=self.global_bias)

    def fold_in(
        self,
        items: IndexArray,
        ratings: ValueArray | None = None,
        *,
        attributes: Attributes | None = None,
    ) -> UserVector:
        """A new user's vector from their attributes and history: the features' sum plus an own
        embedding and bias fitted to the history; negative indices are ignored."""
        base = self.user_feature_vector(attributes, np.asarray(items, dtype=np.int64))
        k_items, k_ratings = known_history(items, ratings, self.n_items)
        if len(k_items) == 0:
            return base
        return self._fit_own(base, k_items, k_ratings)

    @abstractmethod
    def _fit_own(
        self, base: UserVector, items: IndexArray, ratings: ValueArray | None
    ) -> UserVector:
        """The fold-in's own part on top of the features' vector `base`."""

    # ----- persistence -----------------------------------------------------------------------
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
        """Global bias, feature vocabularies and table layouts (JSON)."""
        return {
            "global_bias": self.global_bias,
            "best_epoch": self.best_epoch,
            "encoder": self.encoder.to_json(),
            "user_layout": _layout_json(self.user_layout),
            "item_layout": _layout_json(self.item_layout),
        }

    def restore_extra_metadata(self, extra: dict[str, Any]) -> None:
        """Restore what `extra_metadata` wrote."""
        self.global_bias = float(extra["global_bias"])
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.encoder = FeatureEncoder.from_json(extra["encoder"])
        self.user_layout = SideLayout(*(int(v) for v in extra["user_layout"]))
        self.item_layout = SideLayout(*(int(v) for v in extra["item_layout"]))


def _layout_json(layout: SideLayout) -> list[int]:
    return [layout.ids, layout.features, layout.implicit]


def _unreached(rows: SparseRows, active: np.ndarray[Any, Any], size: int) -> IndexArray:
    """Table rows that no active entity's feature row references."""
    counts = np.diff(rows.indptr)
    reached = np.zeros(size, dtype=bool)
    reached[rows.indices[np.repeat(active, counts)]] = True
    return np.flatnonzero(~reached).astype(np.int64)
