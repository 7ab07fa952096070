"""Per-process serving state: the read engine, the item catalog and each model's item tables.

The catalog (item ids and tags) is read from the database off the request path: at start-up,
whenever a model is first used, and by a poll loop every
`MFSERVE_ITEM_REFRESH_INTERVAL` seconds that re-reads it only when the items' fingerprint
(count, largest id, newest update) changed. Tag filters therefore see metadata at most one
interval old; exclusions never depend on it being fresh (see `ItemIndex.model_indices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import Engine

from service.config import Settings
from service.db.profiles import (
    ItemRows,
    ProfileReader,
    UserProfile,
    items_fingerprint,
    read_item_rows,
)
from service.metrics import ServiceMetrics
from service.ml.base import Recommender
from service.ml.device import resolve_device
from service.registry import ModelRegistry, ServedModel
from service.serving._batcher import Batcher
from service.serving._registry import NoModelError
from service.serving._tables import ItemIndex, ItemTable

log = logging.getLogger(__name__)

CACHED_MODELS = 4
"""Item tables kept for this many models (the served one, its fallback, and recent ones)."""


@dataclass(frozen=True)
class ModelView:
    """One model's item table joined with the current catalog."""

    model: Recommender[Any]
    table: ItemTable
    index: ItemIndex


@dataclass(frozen=True)
class ServingContext:
    """Everything a request scores with: read once, at the start of the request."""

    served: ServedModel
    primary: ModelView
    fallback: ModelView
    """The popularity model packed with the version, or the primary model itself."""
    has_fallback: bool
    settings: Settings
    runtime: ServingRuntime

    @property
    def rows(self) -> ItemRows:
        """The item catalog the context was built with."""
        return self.primary.index.rows


class ServingRuntime:
    """The serving part of an API process (one per application instance)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        registry: ModelRegistry | None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.metrics = metrics
        self.device = resolve_device(settings.serving_device)
        self._profiles = ProfileReader(engine)
        self._rows: ItemRows | None = None
        self._tables: OrderedDict[int, tuple[Recommender[Any], ItemTable]] = OrderedDict()
        self._indexes: OrderedDict[tuple[int, int], ItemIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._freeze_pending = True
        self._current: ServingContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.batcher: Batcher | None = None
        """Batches concurrent calls: reads their profiles in one query and ranks them together
        in its scoring thread (set by the lifespan; None: everything runs inline)."""

    # ----- database reads --------------------------------------------------------------------
    def read_profiles(self, users: Sequence[str]) -> dict[str, UserProfile]:
        """Profiles of users in one query (blocking; SQLite's serving reads run it on the
        event loop, PostgreSQL's go through `AsyncProfileReader`)."""
        return self._profiles.read(users) if users else {}

    def refresh_items(self, force: bool = False) -> bool:
        """Re-read the item catalog when it changed (or when forced); True when re-read."""
        with self.engine.connect() as connection:
            rows = self._rows
            if not force and rows is not None and items_fingerprint(connection) == rows.fingerprint:
                return False
            self._rows = read_item_rows(connection)
        return True

    def _catalog(self) -> ItemRows:
        rows = self._rows
        if rows is None:
            self.refresh_items(force=True)
            rows = self._rows
        assert rows is not None
        return rows

    # ----- per-model tables ------------------------------------------------------------------
    def _table(self, model: Recommender[Any]) -> ItemTable:
        entry = self._tables.get(id(model))
        if entry is not None and entry[0] is model:
            return entry[1]
        with self._lock:
            entry = self._tables.get(id(model))
            if entry is not None and entry[0] is model:
                return entry[1]
            table = ItemTable.build(model, self.device)
            # A new model may know items created after the catalog was read: read it again.
            self.refresh_items(force=True)
            self._tables[id(model)] = (model, table)
            self._freeze_pending = True
            while len(self._tables) > CACHED_MODELS:
                self._tables.popitem(last=False)
        return table

    def _index(self, table: ItemTable) -> ItemIndex:
        rows = self._catalog()
        key = (id(table), id(rows))
        index = self._indexes.get(key)
        if index is not None and index.rows is rows:
            return index
        with self._lock:
            index = ItemIndex.build(rows, table.vocabulary)
            self._indexes[key] = index
            while len(self._indexes) > 2 * CACHED_MODELS:
                self._indexes.popitem(last=False)
        return index

    def view(self, model: Recommender[Any]) -> ModelView:
        """The model's item table and catalog index (built on first use)."""
        table = self._table(model)
        return ModelView(model=model, table=table, index=self._index(table))

    def context(self, served: ServedModel) -> ServingContext:
        """The scoring context of one request, for the model version it read."""
        primary = self.view(served.model)
        fallback = primary if served.fallback is None else self.view(served.fallback)
        return ServingContext(
            served=served,
            primary=primary,
            fallback=fallback,
            has_fallback=served.fallback is not None,
            settings=self.settings,
            runtime=self,
        )

    def current(self) -> ServingContext:
        """The context of the model served now (read once); 503 before any model is active.

        The context is kept until the served model or the item catalog changes.
        """
        served = None if self.registry is None else self.registry.current
        if served is None:
            raise NoModelError(
                "no model is trained yet: post ratings and call POST /admin/retrain "
                "(or wait for scheduled retraining)"
            )
        context = self._current
        if context is None or context.served is not served or context.rows is not self._rows:
            context = self._current = self.context(served)
        return context

    def count_sources(self, endpoint: str, sources: Sequence[str]) -> None:
        """Count how the users of one call were scored (a no-op without metrics)."""
        if self.metrics is not None:
            self.metrics.count_sources(endpoint, sources)

    def warm(self) -> None:
        """Build the tables of the served model now, off the request path."""
        served = None if self.registry is None else self.registry.current
        if served is not None:
            self.context(served)
            if self._freeze_pending:
                self._freeze_pending = False
                freeze_long_lived_objects()

    # ----- background refresh ----------------------------------------------------------------
    async def run(self) -> None:
        """Refresh the catalog and warm new models until `stop` is called."""
        stopping = self._stopping
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.refresh_items)
                await asyncio.to_thread(self.warm)
            except Exception:  # the database may be briefly away; try again next time
                log.warning("serving catalog refresh failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.item_refresh_interval)

    def start(self) -> None:
        """Start the refresh loop on the running event loop."""
        if self._task is None or self._task.done():
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self.run(), name="serving-catalog-refresh")

    async def stop(self) -> None:
        """Stop the refresh loop, letting a read in progress finish (its connection included)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()  # not task.cancel(): a cancelled to_thread leaves its thread running
        await task


def freeze_long_lived_objects() -> None:
    """Move every live object out of the garbage collector's view, once per loaded model.

    A served model, its id vocabularies and the item catalog are hundreds of thousands of
    long-lived objects; each full (generation 2) collection walked them all, holding the GIL for
    about 120 ms and stalling every request in flight (the 32-client p99 of `bench/serve.py`).
    Unfreezing first lets the collection reclaim a swapped-out model even where it sits in
    reference cycles; that one full collection runs here, in the background refresh thread.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def configure_torch(settings: Settings) -> None:
    """Set torch's intra-op threads in the API process, so BLAS does not oversubscribe cores."""
    torch.set_num_threads(settings.torch_threads)
