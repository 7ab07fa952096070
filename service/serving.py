"""Recommendations from the served model: stored embeddings for trained users, else popularity.

The minimal serving path of issue 4; `GET /recommend/{user}` calls `recommend_for_user` with the
model reference it read once for the request. Items the user has rated (read from the database,
so ratings posted after training count) are never recommended. Before any model version is
active the call fails with 503: the popularity fallback is part of a trained version's artifact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from service.db.history import user_history
from service.db.jobs import VersionRecord, get_active_version
from service.db.session import transaction
from service.errors import ServiceUnavailableError
from service.ml.base import Recommender
from service.registry import ModelRegistry, ServedModel

if TYPE_CHECKING:
    from service.api.state import ServiceState


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user and where it came from ("model" or "popular")."""

    user: str
    model_version: int
    source: str
    items: list[tuple[str, float]]


class NoModelError(ServiceUnavailableError):
    """No model version has been trained and activated yet."""

    error = "no_model"


def _top_items(
    model: Recommender[Any],
    embedding: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    rated: list[str],
) -> list[tuple[str, float]]:
    excluded = model.item_ids.indices(rated) if rated else np.zeros(0, dtype=np.int64)
    excluded = excluded[excluded >= 0]
    indices, scores = model.recommend(embedding, bias, n, exclude=[excluded])
    result = []
    for index, score in zip(indices[0].tolist(), scores[0].tolist(), strict=True):
        if score == float("-inf"):
            break  # only excluded items are left
        result.append((model.item_ids.id_of(index), float(score)))
    return result


def recommend_for_user(
    session: Session, served: ServedModel | None, user: str, n: int
) -> Recommendation:
    """Top-n unrated items for a user from `served` (the reference read once per request)."""
    if served is None:
        raise NoModelError(
            "no model is trained yet: post ratings and call POST /admin/retrain "
            "(or wait for scheduled retraining)"
        )
    rated = [item for item, _rating in user_history(session, user)]
    model = served.model
    index = model.user_ids.index(user)
    with torch.inference_mode():
        if index is not None:
            embedding, bias = model.user_parameters(torch.tensor([index], device=model.device))
            items = _top_items(model, embedding, bias, n, rated)
            return Recommendation(user, served.version, "model", items)
        fallback = served.fallback if served.fallback is not None else model
        width = fallback.embedding_size
        # A zero vector scores every item by its bias alone: the popularity ranking for
        # `popular`, the item-bias ranking for any other model.
        embedding = torch.zeros((1, width), device=fallback.device)
        bias = torch.zeros(1, device=fallback.device)
        items = _top_items(fallback, embedding, bias, n, rated)
    return Recommendation(user, served.version, "popular", items)


def fetch_active_version(sessions: sessionmaker[Session]) -> Callable[[], VersionRecord | None]:
    """A function reading the active version's record, for the registry's poll loop."""

    def fetch() -> VersionRecord | None:
        with transaction(sessions) as session:
            return get_active_version(session)

    return fetch


def registry_readiness(registry: ModelRegistry) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """A `/readyz` part: the version served (null before any), never blocking readiness."""

    def check() -> tuple[bool, dict[str, Any]]:
        served = registry.current
        return True, {
            "model_version": None if served is None else served.version,
            "model_algorithm": None if served is None else served.algorithm,
            "model_loaded_at": None if served is None else served.loaded_at.isoformat(),
            "model_error": registry.last_error,
        }

    return check


@asynccontextmanager
async def model_registry(state: ServiceState) -> AsyncIterator[ModelRegistry]:
    """The lifespan part that loads the active model, polls for new ones, and stops polling."""
    settings = state.settings
    registry = ModelRegistry(
        fetch_active_version(state.sessions),
        Path(settings.artifact_dir),
        poll_interval_s=settings.registry_poll_interval,
    )
    state.registry = registry
    state.readiness.append(registry_readiness(registry))
    await registry.refresh()  # serve the active model from the first request on
    registry.start()
    try:
        yield registry
    finally:
        await registry.stop()
