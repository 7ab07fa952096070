"""The lifespan part that runs this process's model registry, and its `/readyz` fields.

The registry's loader thread builds each version's serving tables before the version is
swapped in; a second task rejoins the served version with the item catalog when items change.

Before any model version is active, serving calls fail with 503 (`no_model`): the popularity
fallback is part of a trained version's artifact, so there is nothing to serve yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db.notifications import ActivationListener
from service.db.profiles import items_fingerprint, read_item_rows
from service.db.serving_reads import read_histories
from service.db.session import transaction
from service.db.versions import ModelVersion, get_active_version
from service.errors import ServiceUnavailableError
from service.registry._features import features_current, with_features
from service.registry._loader import ModelRegistry, ServedModel, TableBuilder
from service.registry._tables import build_tables

log = logging.getLogger(__name__)


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


def table_builder(engine: Engine, device: torch.device) -> TableBuilder:
    """The registry's `build`: reads the item catalog and every user's history marker and
    ratings (`engine`), and builds the version's serving tables on `device`."""

    def build(served: ServedModel) -> ServedModel:
        with engine.connect() as connection:
            rows = read_item_rows(connection)
        histories = read_histories(engine)
        tables = build_tables(
            served.model, served.fallback, served.snapshot, rows, histories, device
        )
        del histories
        with engine.connect() as connection:
            tables = with_features(tables, connection)
        built = replace(served, tables=tables)
        freeze_long_lived_objects()
        return built

    return build


def catalog_update(engine: Engine) -> Callable[[ServedModel], ServedModel | None]:
    """A served version joined with the current item catalog (and, for feature-aware models,
    cold items and users' attributes), or None when nothing changed."""

    def update(served: ServedModel) -> ServedModel | None:
        tables = served.tables
        if tables is None:
            return None
        with engine.connect() as connection:
            if items_fingerprint(connection) == tables.catalog.fingerprint and features_current(
                tables, connection
            ):
                return None
            rows = read_item_rows(connection)
            tables = with_features(tables.with_catalog(rows), connection)
        return replace(served, tables=tables)

    return update


async def refresh_catalog(
    registry: ModelRegistry, engine: Engine, interval_s: float, stopping: asyncio.Event
) -> None:
    """Rejoin the served version with the item catalog whenever items change, until
    `stopping` is set (tag filters see metadata at most one interval old)."""
    update = catalog_update(engine)
    while not stopping.is_set():
        served = registry.current
        if served is not None:
            try:
                await registry.replace_current(served, update)
            except Exception:  # the database may be briefly away; try again next time
                log.warning("item catalog refresh failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)


@asynccontextmanager
async def model_registry(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine, device: torch.device
) -> AsyncIterator[ModelRegistry]:
    """The lifespan part that loads the active model with its serving tables, polls for new
    ones (woken by PostgreSQL notices), keeps their item catalog fresh, and stops polling."""
    registry = ModelRegistry(
        fetch_active_version(sessions),
        Path(settings.artifact_dir),
        poll_interval_s=settings.registry_poll_interval,
        build=table_builder(engine, device),
    )
    await registry.refresh()  # serve the active model from the first request on
    registry.start()
    stopping = asyncio.Event()
    catalog = asyncio.create_task(
        refresh_catalog(registry, engine, settings.item_refresh_interval, stopping),
        name="serving-catalog-refresh",
    )
    listener = None
    if engine.dialect.name == "postgresql":
        # activations elsewhere wake this process's poll at once (the poll stays the fallback)
        listener = ActivationListener(settings.database_url, lambda _version: registry.wake())
        listener.start()
    try:
        yield registry
    finally:
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        stopping.set()  # not cancel(): a cancelled to_thread leaves its thread running
        await catalog
        await registry.stop()


def freeze_long_lived_objects() -> None:
    """Move every live object out of the garbage collector's view, once per loaded model.

    A served model, its id vocabularies and the item catalog are hundreds of thousands of
    long-lived objects; each full (generation 2) collection walked them all, holding the GIL
    and stalling every request in flight. Unfreezing first lets the collection reclaim a
    swapped-out model even where it sits in reference cycles; that one full collection runs in
    the loader thread.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
