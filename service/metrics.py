"""Prometheus metrics of one API process: request latency and status by route, the model version
served, and how users were scored (stored embedding, on-the-fly fold-in, popularity fallback).

Each application owns its own `CollectorRegistry` (several apps may live in one test process).
The middleware is plain ASGI and keeps the labelled children in a dict, so timing a request
costs no label lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Histogram buckets in seconds: fine below 10 ms, where the serving calls live."""

UNMATCHED_ROUTE = "<unmatched>"
"""Route label of requests that matched no route (404s), so paths cannot blow up the labels."""


class ServiceMetrics:
    """The metrics of one application instance, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "mfserve_request_duration_seconds",
            "Time from request start to the end of the response body, by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "mfserve_requests",
            "HTTP requests answered, by route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "mfserve_model_version",
            "Model version this process serves (-1 before any).",
            registry=self.registry,
        )
        self.model_version.set(-1)
        self.users_scored = Counter(
            "mfserve_users_scored",
            "Users scored, by how their vector was obtained (model, foldin, popular).",
            ["endpoint", "source"],
            registry=self.registry,
        )
        self.foldins = Counter(
            "mfserve_foldins",
            "User vectors folded in on the fly (changed, new or anonymous users).",
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "mfserve_fallbacks",
            "Users answered by the popularity fallback (no usable history).",
            registry=self.registry,
        )
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._source_children: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        key = (method, route)
        latency = self._latency_children.get(key)
        if latency is None:
            latency = self._latency_children[key] = self.latency.labels(method, route)
        latency.observe(seconds)
        status_key = (method, route, status)
        counter = self._request_children.get(status_key)
        if counter is None:
            counter = self._request_children[status_key] = self.requests.labels(
                method, route, str(status)
            )
        counter.inc()

    def count_sources(self, endpoint: str, sources: Iterable[str]) -> None:
        """Count how each user of a request was scored; fold-ins and fallbacks also in totals."""
        for source in sources:
            key = (endpoint, source)
            child = self._source_children.get(key)
            if child is None:
                child = self._source_children[key] = self.users_scored.labels(endpoint, source)
            child.inc()
            if source == "foldin":
                self.foldins.inc()
            elif source == "popular":
                self.fallbacks.inc()

    def render(self, model_version: int | None) -> Response:
        """The text exposition of every metric."""
        self.model_version.set(-1 if model_version is None else model_version)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Times every HTTP request and counts it by route template and status code."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, recording its duration once the response is complete."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) if route is not None else None
            self.metrics.observe(
                scope["method"],
                path if isinstance(path, str) else UNMATCHED_ROUTE,
                status,
                time.perf_counter() - start,
            )


def metrics_endpoint(
    metrics: ServiceMetrics, served_version: Callable[[Request], int | None]
) -> Callable[[Request], Response]:
    """The `/metrics` handler for one application."""

    def handler(request: Request) -> Response:
        return metrics.render(served_version(request))

    return handler
