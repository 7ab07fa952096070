"""User vectors from what users told about themselves, for feature-aware models: a user without
usable ratings is placed by their attributes (source "features"), and a new user's fold-in
starts from them. Only users whose stored embedding is not used get here."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from service.ml.data import IndexArray, ValueArray
from service.ml.features import Attributes
from service.ml.fm.scorer import FMScorer
from service.recommend.context import ServingContext
from service.registry import feature_model

Placed = tuple[torch.Tensor, float]
"""An embedding on the serving device and a bias."""


def _model_and_attributes(
    context: ServingContext, user: str
) -> tuple[FMScorer[Any], Attributes] | None:
    state = context.tables.features
    if state is None:
        return None
    attributes = state.user_attributes.get(user)
    model = feature_model(context.tables.primary.model)
    if not attributes or model is None:
        return None
    return model, attributes


def _placed(context: ServingContext, embedding: torch.Tensor, bias: float) -> Placed:
    device = context.tables.primary.table.device
    return embedding.to(device=device, dtype=torch.float32), bias


def attribute_vector(context: ServingContext, user: str) -> Placed | None:
    """The vector of a user known only by their attributes, or None (no feature-aware model,
    or no attributes)."""
    found = _model_and_attributes(context, user)
    if found is None:
        return None
    model, attributes = found
    vector = model.cold_user_vector(attributes)
    return _placed(context, vector.embedding, float(vector.bias))


def attribute_fold_in(
    context: ServingContext, user: str, indices: IndexArray, ratings: ValueArray
) -> Placed | None:
    """The fold-in of a new user's history (model indices, -1 for unknown items) on top of their
    attributes, or None when the model has no features, the user no attributes or no usable
    history."""
    found = _model_and_attributes(context, user)
    if found is None:
        return None
    model, attributes = found
    known = (indices >= 0) & (indices < model.n_items)
    if not known.any():
        return None  # no usable history: `attribute_vector` places the user
    items, values = indices[known], ratings[known]
    rated = ~np.isnan(values)
    try:
        if model.explicit and rated.any():
            folded = model.fold_in(items[rated], values[rated], attributes=attributes)
        else:
            folded = model.fold_in(items, values if rated.all() else None, attributes=attributes)
    except ValueError:  # e.g. an explicit model given a history without ratings
        return None
    return _placed(context, folded.embedding, float(folded.bias))
