"""The lifespan part that sets up serving: torch threads, a read engine, the item catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from service.config import Settings
from service.db.profiles import AsyncProfileReader
from service.db.session import create_db_engine, normalize_database_url
from service.metrics import ServiceMetrics
from service.serving._batcher import Batcher
from service.serving._requests import ScoreBuffers, batch_function, read_inline
from service.serving._runtime import ServingRuntime, configure_torch

if TYPE_CHECKING:
    from service.api.state import ServiceState

POOL_SIZE = 16
"""Connections the serving engine keeps open (opened on demand): enough for SQLite's serving
reads, the routes that read through the thread pool, and the catalog refresh, without closing
and reopening overflow connections under load."""

POOL_OVERFLOW = 32
"""Extra connections it may open under a burst of concurrent requests."""

SQLITE_MMAP_BYTES = 1 << 30
"""SQLite serving reads map up to this much of the database file (address space, not memory):
a profile read then copies no pages through read calls (about 20% faster per query)."""


def create_serving_engine(settings: Settings) -> Engine:
    """A read engine for the request path: no pre-ping, and on PostgreSQL autocommit reads.

    Both save round trips: each serving call then costs exactly its one query (no ping, no
    BEGIN, no ROLLBACK). A dropped connection fails one request with 503 and is replaced.
    """
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    if make_url(normalize_database_url(settings.database_url)).get_backend_name() != "sqlite":
        options.update(pool_pre_ping=False, isolation_level="AUTOCOMMIT")
    else:
        options.update(sqlite_mmap_bytes=SQLITE_MMAP_BYTES)
    return create_db_engine(settings.database_url, **options)


@asynccontextmanager
async def serving_runtime(
    state: ServiceState, metrics: ServiceMetrics | None = None
) -> AsyncIterator[ServingRuntime]:
    """Build the serving runtime, read the item catalog, and refresh it until shutdown."""
    settings = state.settings
    configure_torch(settings)
    engine = create_serving_engine(settings)
    try:
        runtime = ServingRuntime(settings, engine, state.registry, metrics)
        await anyio.to_thread.run_sync(runtime.refresh_items)
        await anyio.to_thread.run_sync(runtime.warm)
        reader = None
        if engine.dialect.name == "sqlite":
            fetch = read_inline(runtime.read_profiles)
        else:
            reader = AsyncProfileReader(settings.database_url)
            fetch = reader.read
        runtime.batcher = Batcher(batch_function(fetch, ScoreBuffers()))
        state.serving = runtime
        runtime.start()
        try:
            yield runtime
        finally:
            await runtime.stop()
            await anyio.to_thread.run_sync(runtime.batcher.close)
            if reader is not None:
                await reader.close()
    finally:
        engine.dispose()
