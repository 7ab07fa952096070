"""The lifespan part that runs this process's model registry, and its `/readyz` fields.

Before any model version is active, serving calls fail with 503 (`no_model`): the popularity
fallback is part of a trained version's artifact, so there is nothing to serve yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.notifications import ActivationListener
from service.db.session import transaction
from service.db.versions import ModelVersion, get_active_version
from service.errors import ServiceUnavailableError
from service.registry import ModelRegistry

if TYPE_CHECKING:
    from service.api.state import ServiceState


class NoModelError(ServiceUnavailableError):
    """No model version has been trained and activated yet."""

    error = "no_model"


def fetch_active_version(sessions: sessionmaker[Session]) -> Callable[[], ModelVersion | None]:
    """A function reading the active version's record, for the registry's poll loop."""

    def fetch() -> ModelVersion | None:
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
    listener = None
    if state.engine.dialect.name == "postgresql":
        # activations elsewhere wake this process's poll at once (the poll stays the fallback)
        listener = ActivationListener(settings.database_url, lambda _version: registry.wake())
        listener.start()
    try:
        yield registry
    finally:
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        await registry.stop()
