"""The FastAPI application factory; its lifespan owns the database engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

import service
from service.api import (
    admin,
    dashboard,
    foldin,
    health,
    insights,
    items,
    keys,
    ratings,
    recommendations,
    scores,
    similar,
    users,
)
from service.api.content_type import JsonBodiesOnly
from service.api.hot_routes import HotRoutes
from service.api.limits import BodySizeLimit
from service.api.openapi import install_contract
from service.api.request_id import RequestId
from service.api.state import LifespanState, ServiceState
from service.config import Settings
from service.db.migrations import check_schema
from service.db.serving_reads import create_serving_engine, serving_readers
from service.db.session import create_db_engine, make_sessionmaker
from service.domain.group_commit import RatingWriter
from service.domain.key_cache import key_authenticator
from service.errors import install_error_handlers
from service.metrics import MetricsMiddleware, ServiceMetrics, metrics_endpoint
from service.ml.device import configure_threads, resolve_device
from service.recommend import serving
from service.registry import model_registry, registry_readiness


def create_app(settings: Settings) -> FastAPI:
    """Build the application; nothing touches the database until the lifespan starts."""

    metrics = ServiceMetrics() if settings.metrics_enabled else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[LifespanState]:
        engine = create_db_engine(settings.database_url)
        try:
            check_schema(engine)
            configure_threads(settings.torch_threads)
            device = resolve_device(settings.serving_device)
            sessions = make_sessionmaker(engine)
            write_sessions = make_sessionmaker(engine, write=True)
            read_engine = create_serving_engine(settings.database_url)
            rating_writer = RatingWriter(engine)
            try:
                async with (
                    key_authenticator(settings, sessions, write_sessions) as auth,
                    # loads the active model and builds its tables, polls for new ones
                    model_registry(settings, sessions, read_engine, device) as registry,
                    serving_readers(settings.database_url, read_engine) as (markers, profiles),
                    serving(settings, registry, markers, profiles, metrics) as runtime,
                ):
                    yield {
                        "service": ServiceState(
                            settings=settings,
                            engine=engine,
                            sessions=sessions,
                            write_sessions=write_sessions,
                            rating_writer=rating_writer,
                            registry=registry,
                            serving=runtime,
                            auth=auth,
                            readiness=[auth_readiness(settings), registry_readiness(registry)],
                        )
                    }
            finally:
                rating_writer.close()  # writes what is queued
                read_engine.dispose()
        finally:
            engine.dispose()

    app = ServiceApp(
        title="mfserve",
        version=service.__version__,
        summary="Ratings storage and matrix-factorization recommendations.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(JsonBodiesOnly)
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
            users.router,
            admin.router,
            insights.router,
            dashboard.router,
            keys.router,
        )
    )
    app.mount(dashboard.STATIC_PREFIX, dashboard.static_files(), name="dashboard-static")
    # In front of everything, FastAPI's documentation routes included: matched first, once.
    app.router.routes[:0] = recommendations.HOT_ROUTES + scores.HOT_ROUTES
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
        app.add_route(
            "/metrics",
            metrics_endpoint(metrics, _served_version),
            methods=["GET"],
            include_in_schema=False,
        )
    app.add_middleware(RequestId)
    # In front of FastAPI's own outer layers: serves `POST /ratings` and the plain serving routes
    # itself, with the same rules and the application's exception handlers (the router keeps
    # the latter for its 405s).
    app.front = partial(
        HotRoutes,
        routes=ratings.HOT_ROUTES,
        plain_routes=recommendations.HOT_ROUTES + scores.HOT_ROUTES,
        max_bytes=settings.max_body_bytes,
        metrics=metrics,
        exception_handlers=app.exception_handlers,
    )
    if settings.cors_origins:
        cors = partial(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
        hot = app.front
        app.front = lambda stack: cors(hot(stack))
    install_contract(app, settings)
    return app


class ServiceApp(FastAPI):
    """The application, with layers in front of FastAPI's outer middleware (`front`).

    FastAPI wraps every request in three layers of its own (server errors, telemetry, its body
    limit) before the application's middleware: a hot call served in front of them skips
    their cost, and their wrapped `send`.
    """

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's middleware stack, with `front` around it."""
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


def one_router(*routers: APIRouter) -> APIRouter:
    """The routes of several routers, in order, in one router.

    FastAPI matches each included router as a layer of its own, so a request for a route of
    the Nth router paid N-1 failed layer matches first.
    """
    merged = APIRouter()
    for router in routers:
        merged.routes.extend(router.routes)
    return merged


def auth_readiness(settings: Settings) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """A `/readyz` part that says whether the data API needs keys (`off`: open to anyone)."""
    fields = {"auth": settings.auth}
    return lambda: (True, fields)


def _served_version(request: Request) -> int | None:
    """The model version this process serves, for the metrics page."""
    return request.state.service.registry.version  # type: ignore[no-any-return]
