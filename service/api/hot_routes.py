"""The hot calls served in front of the application's middleware and router, in one layer.

A call of `POST /ratings` is worth less than the request machinery around it: six middleware
layers, the router, a `Request` and a `Response`. This layer serves such calls itself with the
same rules as that machinery (the helpers of `request_id`, `limits` and `content_type`, the
application's own exception handlers, the same metrics), reading the headers once. The plain
routes of the serving calls (`GET /recommend/{user}`, `POST /scores`) are served here too, with
the same rules, when their path and method match; every other request passes through untouched.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.content_type import is_json_media_type, not_json_message
from service.api.limits import too_large_message
from service.api.request_id import HEADER as REQUEST_ID_HEADER
from service.api.request_id import assign_request_id, usable_client_id
from service.api.serving_deps import PlainEndpoint
from service.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from service.metrics import ServiceMetrics

HotHandler = Callable[[Any, str | None, bytes], Awaitable[tuple[int, bytes]]]
"""Serves a hot call: (the lifespan's service state, the Authorization header, the body) ->
(status, JSON reply). Errors are raised as the application's exceptions."""

ExceptionHandler = Callable[[Request, Any], Any]
"""An exception handler of the application (`app.exception_handlers`), sync or async."""

_JSON_HEADERS = [(b"content-type", b"application/json")]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SET_HERE = frozenset({b"content-length", REQUEST_ID_HEADER})


class HotRoutes:
    """Serve `(method, path)` calls of `routes` directly; pass every other request on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[tuple[str, str], HotHandler],
        max_bytes: int,
        metrics: ServiceMetrics | None,
        exception_handlers: Mapping[Any, ExceptionHandler],
        plain_routes: Sequence[Route] = (),
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self.plain_routes = list(plain_routes)
        """Templated routes (`serving_deps.plain_route`) whose endpoints this layer serves."""
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a hot call, or hand the request to the application."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = self.routes.get((scope["method"], scope["path"]))
        plain = None if handler is not None else self._plain_route(scope)
        if handler is None and plain is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        client_id = authorization = content_type = None
        declared: int | None = None
        streamed = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = _length(value)
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == REQUEST_ID_HEADER:
                client_id = usable_client_id(value)
            elif name == b"transfer-encoding":
                streamed = True
        request_id = assign_request_id(scope, client_id)
        try:
            if declared is not None and declared > self.max_bytes:
                raise PayloadTooLargeError(too_large_message(declared, self.max_bytes))
            has_body = streamed or bool(declared)
            media_type = content_type or b""
            if has_body and scope["method"] in _BODY_METHODS and not is_json_media_type(media_type):
                raise UnsupportedMediaTypeError(not_json_message(media_type))
            body = await self._body(receive)
            if body is None:
                return  # the client went away: nobody to answer
            if plain is not None:
                status, reply, headers = await _serve_plain(plain, scope, body)
            else:
                assert handler is not None
                status, reply = await handler(scope["state"]["service"], authorization, body)
                headers = _JSON_HEADERS
        except Exception as exc:
            response = self._error_handler(exc)(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            status, reply = response.status_code, response.body
            headers = [h for h in response.raw_headers if h[0] not in _SET_HERE]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"content-length", str(len(reply)).encode()),
                    (REQUEST_ID_HEADER, request_id),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply})
        if self.metrics is not None:
            label = scope["path"] if plain is None else plain.path
            self.metrics.observe(scope["method"], label, status, time.perf_counter() - start)

    def _plain_route(self, scope: Scope) -> Route | None:
        """The plain route that matches the request in full (path and method), if any: a
        path match with another method is left to the router (405)."""
        for route in self.plain_routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                return route
        return None

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body (413 once it passes the limit); None when the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLargeError(too_large_message(size, self.max_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _error_handler(self, exc: Exception) -> ExceptionHandler:
        """The application's handler of the exception's nearest class (as Starlette picks it)."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        raise exc


async def _serve_plain(
    route: Route, scope: Scope, body: bytes
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A plain route's status, reply and headers, its endpoint given the body already read."""
    endpoint = route.endpoint
    if not isinstance(endpoint, PlainEndpoint):
        raise TypeError(f"{route.path} is not a plain route")
    scope["route"] = endpoint  # the route's label in the metrics, as `PlainEndpoint` sets it

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    request._body = body  # read already: `request.body()` answers it without a receive
    response = await endpoint.handler(request)
    headers = [h for h in response.raw_headers if h[0] not in _SET_HERE]
    return response.status_code, bytes(response.body), headers


def _length(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
