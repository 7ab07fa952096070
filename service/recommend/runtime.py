"""The serving part of an API process: the served version's context, the batcher, the
profile source, and the counters of how users were scored."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from service.config import Settings
from service.metrics import ServiceMetrics
from service.recommend.batcher import GIL_SWITCH_INTERVAL_S, Batcher
from service.recommend.context import ServingContext
from service.recommend.plan import ScoreBuffers, batch_function
from service.recommend.profiles import MarkerFetch, ProfileFetch, ProfileSource
from service.registry import ModelRegistry, NoModelError


class Serving:
    """Serves the registry's current version (one per application instance)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        profiles: ProfileSource,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.profiles = profiles
        self.metrics = metrics
        self._current: ServingContext | None = None
        self.batcher: Batcher | None = None
        """Batches concurrent calls (None: everything runs inline)."""

    def current(self) -> ServingContext:
        """The context of the version served now (read once); 503 before any is active."""
        served = self.registry.current
        if served is None or served.tables is None:
            raise NoModelError(
                "no model is trained yet: post ratings and call POST /admin/retrain "
                "(or wait for scheduled retraining)"
            )
        context = self._current
        if context is None or context.served is not served:
            context = self._current = ServingContext(served, served.tables, self.settings, self)
        return context

    def count_sources(self, endpoint: str, sources: Sequence[str]) -> None:
        """Count how the users of one call were scored (a no-op without metrics)."""
        if self.metrics is not None:
            self.metrics.count_sources(endpoint, sources)


@asynccontextmanager
async def serving(
    settings: Settings,
    registry: ModelRegistry,
    markers: MarkerFetch,
    profiles: ProfileFetch,
    metrics: ServiceMetrics | None = None,
) -> AsyncIterator[Serving]:
    """Serve with a batcher whose profile reads go through `markers` and `profiles` (and the
    interpreter's GIL switch interval shortened to `GIL_SWITCH_INTERVAL_S` meanwhile)."""
    source = ProfileSource(markers, profiles, settings.profile_cache_ratings)
    runtime = Serving(settings, registry, source, metrics)
    batcher = Batcher(batch_function(source, ScoreBuffers()))
    runtime.batcher = batcher
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        yield runtime
    finally:
        sys.setswitchinterval(switch_interval)
        runtime.batcher = None
        batcher.close()
