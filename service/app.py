"""The FastAPI application factory; its lifespan owns the database engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request

import service
from service.api import admin, foldin, health, items, ratings, recommendations, scores, similar
from service.api.limits import BodySizeLimit
from service.api.state import LifespanState, ServiceState
from service.config import Settings
from service.db.migrations import check_schema
from service.db.session import create_db_engine, make_sessionmaker
from service.domain.group_commit import RatingWriter
from service.errors import install_error_handlers
from service.metrics import MetricsMiddleware, ServiceMetrics, metrics_endpoint
from service.serving import model_registry, serving_runtime


def create_app(settings: Settings) -> FastAPI:
    """Build the application; nothing touches the database until the lifespan starts."""

    metrics = ServiceMetrics() if settings.metrics_enabled else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[LifespanState]:
        engine = create_db_engine(settings.database_url)
        try:
            check_schema(engine)
            state = ServiceState(
                settings=settings,
                engine=engine,
                sessions=make_sessionmaker(engine),
                write_sessions=make_sessionmaker(engine, write=True),
            )
            state.rating_writer = RatingWriter(state.write_sessions)
            async with (
                model_registry(state),  # loads the active model, polls for new ones
                serving_runtime(state, metrics),  # item catalog and tables of the serving calls
            ):
                yield {"service": state}
        finally:
            engine.dispose()

    app = FastAPI(
        title="mfserve",
        version=service.__version__,
        summary="Ratings storage and matrix-factorization recommendations.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Routes are matched in order: the probes and the hot serving calls come first.
    app.include_router(
        one_router(
            health.router,
            recommendations.router,
            scores.router,
            foldin.router,
            similar.router,
            ratings.router,
            items.router,
            admin.router,
        )
    )
    # In front of everything, FastAPI's documentation routes included: matched first, once.
    app.router.routes[:0] = recommendations.HOT_ROUTES
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
        app.add_route(
            "/metrics",
            metrics_endpoint(metrics, _served_version),
            methods=["GET"],
            include_in_schema=False,
        )
    _document_ratings_body(app)
    return app


def one_router(*routers: APIRouter) -> APIRouter:
    """The routes of several routers, in order, in one router.

    FastAPI matches each included router as a layer of its own, so a request for a route of
    the Nth router paid N-1 failed layer matches first (about 8 us each on the serving calls).
    """
    merged = APIRouter()
    for router in routers:
        merged.routes.extend(router.routes)
    return merged


def _served_version(request: Request) -> int | None:
    """The model version this process serves, for the metrics page."""
    registry = request.state.service.registry
    return None if registry is None else registry.version


def _document_ratings_body(app: FastAPI) -> None:
    """Add the schemas of `POST /ratings`'s body (parsed by hand) to the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document.setdefault("components", {}).setdefault("schemas", {}).update(
                ratings.BODY_COMPONENTS
            )
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
