"""Where a user's vector comes from (the `source` of an answer):

- "model": the stored embedding, for a user the model was trained on and whose ratings did not
  change since the model's data snapshot (`MFSERVE_USER_EMBEDDINGS=auto`, the default);
- "foldin": the user's current history (or the request's history) folded into the model's
  factor space on the fly;
- "features": a user without usable ratings placed by their attributes, by a feature-aware
  model (`cold`);
- "popular": the popularity fallback, when there is no usable history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.ml.base import Recommender
from service.ml.data import IndexArray, ValueArray
from service.recommend.cold import attribute_fold_in, attribute_vector
from service.recommend.context import ServingContext
from service.registry import ModelView, UserProfile


@dataclass
class Vector:
    """One user's vector in the primary model (None: the fallback), and what they rated."""

    source: str
    embedding: torch.Tensor | None = None
    bias: float = 0.0
    rated_db: npt.NDArray[np.int64] | None = None
    """Database ids of the items the user rated (users read from the database)."""
    rated_ids: list[str] | None = field(default=None)
    """External ids of the items of a request's history (anonymous calls)."""

    def rated_in(self, view: ModelView) -> IndexArray:
        """The rated items as indices of one model (-1 for items it does not know)."""
        if self.rated_ids is not None:
            return view.vocabulary.indices(self.rated_ids)
        if self.rated_db is not None:
            return view.index.model_indices(self.rated_db)
        return np.zeros(0, dtype=np.int64)


def fold_in(model: Recommender[Any], indices: IndexArray, ratings: ValueArray) -> Any:
    """The model's fold-in of a history, or None when nothing in it is usable."""
    known = indices >= 0
    if not known.any():
        return None
    items, values = indices[known], ratings[known]
    rated = ~np.isnan(values)
    try:
        if model.explicit and rated.any():
            return model.fold_in(items[rated], values[rated])
        return model.fold_in(items, values if rated.all() else None)
    except ValueError:  # e.g. an explicit model given a history without ratings
        return None


def stored_index(context: ServingContext, user: str, profile: UserProfile | None) -> int | None:
    """The user's row in the model when its stored embedding may be used, else None."""
    served = context.served
    index = served.model.user_ids.index(user)
    mode = context.settings.user_embeddings
    if index is None or mode == "foldin":
        return None
    if mode == "stored":
        return index
    snapshot = served.snapshot
    if snapshot is None:  # no record of what the model saw: trust the embedding
        return index
    seen = snapshot.history_versions.get(user)
    return index if profile is not None and seen == profile.history_version else None


def needs_profile(context: ServingContext, user: str, exclude_rated: bool) -> bool:
    """Whether a call must read the user's profile (their marker, at least)."""
    if exclude_rated:
        return True
    mode = context.settings.user_embeddings
    return not (mode == "stored" and context.served.model.user_ids.index(user) is not None)


def user_vector(context: ServingContext, user: str, profile: UserProfile | None) -> Vector:
    """A stored user's embedding, the fold-in of their profile, or the fallback."""
    primary = context.tables.primary
    rated_db = profile.item_ids if profile is not None else np.zeros(0, dtype=np.int64)
    stored = stored_index(context, user, profile)
    if stored is not None:
        embedding, bias = context.tables.user_vector(stored)
        return Vector("model", embedding, bias, rated_db=rated_db)
    if profile is None:
        return _without_history(context, user, rated_db)
    changed = context.serving.profiles.changed
    kept: Vector | None = changed.folded(user, profile.history_version, primary.model)
    if kept is not None:
        return kept
    indices = primary.index.model_indices(rated_db)
    placed = attribute_fold_in(context, user, indices, profile.ratings)
    if placed is not None:
        vector = Vector("foldin", *placed)
    else:
        vector = history_vector(primary, indices, profile.ratings)
    if vector.source == "popular" and context.tables.features is not None:
        # not kept: the user's attributes may arrive or change while their history does not
        return _without_history(context, user, rated_db)
    vector.rated_db = rated_db
    changed.keep_folded(user, profile.history_version, primary.model, vector)
    return vector


def _without_history(context: ServingContext, user: str, rated_db: npt.NDArray[np.int64]) -> Vector:
    """A user without usable ratings: placed by their attributes, or the fallback."""
    placed = attribute_vector(context, user)
    if placed is None:
        return Vector("popular", rated_db=rated_db)
    return Vector("features", *placed, rated_db=rated_db)


def history_vector(primary: ModelView, indices: IndexArray, ratings: ValueArray) -> Vector:
    """The fold-in of a history (model indices, -1 for unknown items), or the fallback."""
    folded = fold_in(primary.model, indices, ratings)
    if folded is None:
        return Vector("popular")
    embedding = folded.embedding.to(device=primary.table.device, dtype=torch.float32)
    return Vector("foldin", embedding, float(folded.bias))
