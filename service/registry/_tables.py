"""The serving tables of one model version, built whole in the registry's loader thread.

- `ModelView`: one model's item side on the serving device (`service.ml.ranking.ItemTable`), its
  item ids, and its join with the database's item catalog (`ItemIndex`: database item id to
  model index, tag to model indices);
- `UserStates`: what the version's snapshot knew of each trained user, still unchanged when the
  version was loaded: their history marker and rated items. Serving such a user reads one
  indexed row (the marker), never their ratings.

A request only reads these; nothing here is built on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from service.db.profiles import ItemRows, UserProfile
from service.db.serving_reads import Histories
from service.ml.artifacts import SnapshotInfo
from service.ml.base import Recommender
from service.ml.data import IndexArray, Vocabulary
from service.ml.ranking import ItemTable

if TYPE_CHECKING:
    from service.registry._features import FeatureState


@dataclass(frozen=True)
class ItemIndex:
    """Database item ids and tags joined with one model's item vocabulary."""

    by_db_id: IndexArray
    """Model index of each database item id (-1: the model does not know the item)."""
    tag_items: dict[str, IndexArray]
    """Model indices of the items carrying each tag."""

    @classmethod
    def build(cls, rows: ItemRows, vocabulary: Vocabulary) -> ItemIndex:
        """Join the catalog rows with a vocabulary."""
        # one spare slot past the largest id: ids beyond it (items created since) map there
        size = int(rows.db_ids.max()) + 2 if len(rows.db_ids) else 1
        by_db_id = np.full(size, -1, dtype=np.int64)
        model_indices = vocabulary.indices(rows.external_ids)
        by_db_id[rows.db_ids] = model_indices
        tagged: dict[str, list[int]] = {}
        for index, tags in zip(model_indices.tolist(), rows.tags, strict=True):
            if index >= 0:
                for tag in tags:
                    tagged.setdefault(tag, []).append(index)
        tag_items = {tag: np.asarray(found, dtype=np.int64) for tag, found in tagged.items()}
        return cls(by_db_id=by_db_id, tag_items=tag_items)

    def model_indices(self, db_ids: npt.NDArray[np.int64]) -> IndexArray:
        """Model indices of database item ids (-1 for items the model or this index lacks)."""
        if len(db_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.by_db_id[np.minimum(db_ids, len(self.by_db_id) - 1)]

    def tag_sets(self, tags: Sequence[str]) -> list[IndexArray]:
        """The model indices carrying each of the tags (an empty set for an unknown tag)."""
        empty = np.zeros(0, dtype=np.int64)
        return [self.tag_items.get(tag, empty) for tag in dict.fromkeys(tags)]


@dataclass(frozen=True)
class ModelView:
    """One model's item table on the serving device, joined with the item catalog."""

    model: Recommender[Any]
    table: ItemTable
    vocabulary: Vocabulary
    item_ids: list[str]
    index: ItemIndex

    @classmethod
    def build(cls, model: Recommender[Any], rows: ItemRows, device: torch.device) -> ModelView:
        """Copy the model's item side to `device` and join it with the catalog."""
        return cls(
            model=model,
            table=ItemTable.build(model, device),
            vocabulary=model.item_ids,
            item_ids=model.item_ids.ids,
            index=ItemIndex.build(rows, model.item_ids),
        )

    def allowed(self, tags: Sequence[str]) -> torch.Tensor | None:
        """The (m,) mask of the items carrying every tag (None: no filter)."""
        return self.table.allowed(self.index.tag_sets(tags)) if tags else None


@dataclass(frozen=True)
class UserStates:
    """Per trained user (by model index): the history marker at load (-1: no state kept) and
    their rated items, which are rows offsets[u]:offsets[u+1] of `item_ids` and `ratings`."""

    markers: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    """Database item ids."""
    ratings: npt.NDArray[np.float32]

    def profile(self, user: int, marker: int) -> UserProfile | None:
        """The user's profile while their marker is still `marker` (None: read it instead)."""
        if self.markers[user] != marker:
            return None
        start, end = int(self.offsets[user]), int(self.offsets[user + 1])
        return UserProfile(marker, self.item_ids[start:end], self.ratings[start:end])

    @classmethod
    def build(
        cls, histories: Histories, users: Vocabulary, snapshot: SnapshotInfo | None
    ) -> UserStates:
        """Keep the histories of the model's users that are unchanged since its snapshot."""
        rows = users.indices(histories.users)
        keep = rows >= 0
        if snapshot is not None:
            seen = snapshot.history_versions
            at_snapshot = np.fromiter(
                (seen.get(user, -1) for user in histories.users),
                dtype=np.int64,
                count=len(histories.users),
            )
            keep &= at_snapshot == histories.markers
        kept = np.flatnonzero(keep)
        lengths = np.zeros(len(users), dtype=np.int64)
        starts, ends = histories.offsets[kept], histories.offsets[kept + 1]
        lengths[rows[kept]] = ends - starts
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        markers = np.full(len(users), -1, dtype=np.int64)
        markers[rows[kept]] = histories.markers[kept]
        order = np.argsort(rows[kept], kind="stable")
        pieces = [np.arange(starts[i], ends[i]) for i in order.tolist()]
        taken = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        return cls(
            markers=markers,
            offsets=offsets,
            item_ids=histories.item_ids[taken].astype(np.int64),
            ratings=histories.ratings[taken],
        )


@dataclass(frozen=True)
class ServingTables:
    """Everything a request of one model version scores with, built before it is served."""

    primary: ModelView
    fallback: ModelView
    """The popularity model packed with the version, or the primary model itself."""
    has_fallback: bool
    users: UserStates
    catalog: ItemRows
    user_factors: torch.Tensor
    """(n_users, k) stored user embeddings on the serving device."""
    user_biases: list[float]
    features: FeatureState | None = None
    """Cold items and users' attributes of a feature-aware model (`_features`)."""

    def user_vector(self, index: int) -> tuple[torch.Tensor, float]:
        """A trained user's stored embedding (k,) and bias."""
        return self.user_factors[index], self.user_biases[index]

    def with_catalog(self, rows: ItemRows) -> ServingTables:
        """The same tables joined with a newer item catalog."""
        primary = replace(self.primary, index=ItemIndex.build(rows, self.primary.vocabulary))
        fallback = primary
        if self.has_fallback:
            fallback = replace(self.fallback, index=ItemIndex.build(rows, self.fallback.vocabulary))
        return replace(self, primary=primary, fallback=fallback, catalog=rows)


def build_tables(
    model: Recommender[Any],
    fallback: Recommender[Any] | None,
    snapshot: SnapshotInfo | None,
    rows: ItemRows,
    histories: Histories,
    device: torch.device,
) -> ServingTables:
    """Every serving table of a model version (in the loader thread)."""
    primary = ModelView.build(model, rows, device)
    with torch.inference_mode():
        factors, biases = model.user_parameters(torch.arange(model.n_users, device=model.device))
        user_factors = factors.detach().to(device=device, dtype=torch.float32).contiguous()
        user_biases = [float(b) for b in biases.detach().cpu().tolist()]
    return ServingTables(
        primary=primary,
        fallback=primary if fallback is None else ModelView.build(fallback, rows, device),
        has_fallback=fallback is not None,
        users=UserStates.build(histories, model.user_ids, snapshot),
        catalog=rows,
        user_factors=user_factors,
        user_biases=user_biases,
    )
