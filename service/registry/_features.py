"""Cold start for feature-aware models, built in the loader thread like every serving table:

- items created after the model's snapshot that carry tags or attributes are appended to the
  primary item table, scored from their features alone (`FMScorer.cold_item_parameters`), so
  they can be recommended, scored and filtered by tag without a retrain;
- every user's attributes, so that a user without ratings gets a vector from them.

Both are refreshed with the item catalog (`MFSERVE_ITEM_REFRESH_INTERVAL`). Models without
feature support get no `FeatureState` and serve as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import torch
from sqlalchemy import Connection

from service.db.feature_snapshot import read_item_attributes
from service.db.profiles import ItemRows
from service.db.user_attributes import attributes_fingerprint, read_all_user_attributes
from service.ml.base import ItemParameters, Recommender
from service.ml.data import Vocabulary
from service.ml.features import Attributes, FeatureData, scalar_attributes
from service.ml.fm.scorer import FMScorer
from service.ml.ranking import ItemTable
from service.registry._tables import ItemIndex, ModelView, ServingTables


@dataclass(frozen=True)
class FeatureState:
    """What a feature-aware model serves beyond its training data."""

    base: ModelView
    """The model's own item table (without cold items), the base of every refresh."""
    cold_items: tuple[str, ...]
    """External ids of the items appended to the primary table, in order."""
    user_attributes: Mapping[str, Attributes]
    """Every user's attributes (strings, numbers, booleans) by external id."""
    fingerprint: tuple[int, datetime | None]
    """The stored attributes' fingerprint when `user_attributes` was read."""


def feature_model(model: Recommender[Any]) -> FMScorer[Any] | None:
    """The model when it scores users and items from their features, else None."""
    return model if isinstance(model, FMScorer) and model.uses_features else None


def features_current(tables: ServingTables, connection: Connection) -> bool:
    """Whether the users' attributes are unchanged since `tables` were built (always true for
    models without features)."""
    state = tables.features
    return state is None or attributes_fingerprint(connection) == state.fingerprint


def _cold_view(
    model: FMScorer[Any], base: ModelView, rows: ItemRows, connection: Connection
) -> tuple[ModelView, tuple[str, ...]]:
    """The base view with every catalog item the model does not know but has features for
    appended, and those items' ids."""
    unknown = [
        (external_id, tags)
        for external_id, tags in zip(rows.external_ids, rows.tags, strict=True)
        if base.vocabulary.index(external_id) is None
    ]
    attributes = read_item_attributes(connection, [external_id for external_id, _ in unknown])
    cold = [(i, tags) for i, tags in unknown if tags or i in attributes]
    if not cold:
        return replace(base, index=ItemIndex.build(rows, base.vocabulary)), ()
    ids = [external_id for external_id, _ in cold]
    features = FeatureData(
        item_tags=dict(cold),
        item_attributes={i: scalar_attributes(attributes[i]) for i in ids if i in attributes},
    )
    device = base.table.device
    with torch.inference_mode():
        own = model.item_parameters()
        extra = model.cold_item_parameters(features, ids)
        params = ItemParameters(
            factors=torch.cat([own.factors, extra.factors.to(own.factors.device)]),
            bias=torch.cat([own.bias, extra.bias.to(own.bias.device)]),
            global_bias=own.global_bias,
        )
    vocabulary = Vocabulary([*base.item_ids, *ids])
    view = ModelView(
        model=model,
        table=ItemTable.of_parameters(params, model.transform_scores, device),
        vocabulary=vocabulary,
        item_ids=vocabulary.ids,
        index=ItemIndex.build(rows, vocabulary),
    )
    return view, tuple(ids)


def with_features(tables: ServingTables, connection: Connection) -> ServingTables:
    """`tables` (joined with their current catalog) with cold items appended and users'
    attributes read, for a feature-aware primary model; unchanged for any other model."""
    base = tables.features.base if tables.features is not None else tables.primary
    model = feature_model(base.model)
    if model is None:
        return tables
    fingerprint = attributes_fingerprint(connection)
    users = {
        user: scalar_attributes(attributes)
        for user, attributes in read_all_user_attributes(connection).items()
    }
    primary, cold = _cold_view(model, base, tables.catalog, connection)
    state = FeatureState(base=base, cold_items=cold, user_attributes=users, fingerprint=fingerprint)
    fallback = tables.fallback if tables.has_fallback else primary
    return replace(tables, primary=primary, fallback=fallback, features=state)
