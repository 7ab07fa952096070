"""Domain errors that carry their HTTP status, and the handlers that render every error as JSON.

Every error response has the shape `{"error": <code>, "detail": <message or list>}`.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the client can act on; `status_code` and `error` select the response."""

    status_code: ClassVar[int] = 500
    error: ClassVar[str] = "internal_error"

    def __init__(self, detail: Any, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequestError(ServiceError):
    """The request cannot be understood (such as malformed JSON)."""

    status_code = 400
    error = "bad_request"


class MalformedJSONError(BadRequestError):
    """The body is not valid JSON."""

    error = "malformed_json"


class UnauthorizedError(ServiceError):
    """No credential was sent (or not as `Authorization: Bearer <key>`)."""

    status_code = 401
    error = "unauthorized"


class ForbiddenError(ServiceError):
    """The credential is unknown or revoked, or lacks the scope the call needs."""

    status_code = 403
    error = "forbidden"


class NotFoundError(ServiceError):
    """An unknown user, item or rating."""

    status_code = 404
    error = "not_found"


class ConflictError(ServiceError):
    """The request conflicts with the current state."""

    status_code = 409
    error = "conflict"


class PayloadTooLargeError(ServiceError):
    """The body is larger than `MFSERVE_MAX_BODY_BYTES`."""

    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    """A body that is not `application/json` where JSON is expected."""

    status_code = 415
    error = "unsupported_media_type"


class InvalidInputError(ServiceError):
    """Well-formed JSON whose values are wrong; `detail` names the fields."""

    status_code = 422
    error = "invalid_input"


class ServiceUnavailableError(ServiceError):
    """The service cannot answer right now (database unreachable or busy, no model)."""

    status_code = 503
    error = "unavailable"


def error_response(status_code: int, error: str, detail: Any, **extra: Any) -> JSONResponse:
    """The JSON response of an error."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status_code)


_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    413: "payload_too_large",
}


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status_code, exc.error, exc.detail, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette names the methods of the first route of the path only
        response.headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
    return response


def allowed_methods(request: Request) -> set[str]:
    """Every method some route of the application serves at the request's path."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _child = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return methods


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    # FastAPI wraps an included router (without a prefix here) around its own routes
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        ctx = errors[0].get("ctx") or {}
        return error_response(
            400, MalformedJSONError.error, f"malformed JSON: {ctx.get('error', '')}"
        )
    detail = [
        {"field": _location(tuple(error.get("loc", ()))), "message": str(error.get("msg", ""))}
        for error in errors
    ]
    return error_response(422, InvalidInputError.error, detail)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", exc)
    return error_response(
        503, ServiceUnavailableError.error, "the database is unavailable or busy; retry"
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # the reply carries the id the log line names (`X-Request-ID`, set by the API's middleware)
    request_id = str((request.scope.get("state") or {}).get("request_id") or uuid.uuid4().hex)
    logger.error(
        "unhandled error in %s %s (request id %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    response = error_response(
        500, ServiceError.error, "internal server error", request_id=request_id
    )
    response.headers["X-Request-ID"] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Render domain errors, request validation and HTTP errors in the one JSON shape."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_error)
    # the serving reads use the drivers directly (no SQLAlchemy wrapping)
    app.add_exception_handler(sqlite3.OperationalError, _database_error)
    app.add_exception_handler(psycopg.OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
