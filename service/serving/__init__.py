"""Serving: recommendations, scores, fold-in and similar items from the served model version.

The routers in `service.api` read the served model once per request, build a
`ServingContext` from it, and call one of the plain functions exported here.
"""

from service.serving._lifespan import create_serving_engine, serving_runtime
from service.serving._registry import (
    NoModelError,
    fetch_active_version,
    model_registry,
    registry_readiness,
)
from service.serving._requests import (
    FoldIn,
    History,
    Recommendation,
    RecommendOptions,
    Scores,
    Similar,
    check_n,
    fold_in_history,
    rank_history,
    rank_users,
    read_history,
    score_items,
    similar_items,
)
from service.serving._runtime import ServingContext, ServingRuntime, configure_torch
from service.serving._tables import ItemIndex, ItemTable

__all__ = [
    "FoldIn",
    "History",
    "ItemIndex",
    "ItemTable",
    "NoModelError",
    "RecommendOptions",
    "Recommendation",
    "Scores",
    "ServingContext",
    "ServingRuntime",
    "Similar",
    "check_n",
    "configure_torch",
    "create_serving_engine",
    "fetch_active_version",
    "fold_in_history",
    "model_registry",
    "rank_history",
    "rank_users",
    "read_history",
    "registry_readiness",
    "score_items",
    "serving_runtime",
    "similar_items",
]
