"""The OpenAPI document as the contract: every error status each route can answer, with the
service's real `{"error", "detail"}` shape, and the limits the settings impose.

FastAPI documents what its own machinery knows (the models, a 422 of its own shape); the routers
check more (rating scale, `n`, list limits) and a middleware answers 401/403/413/415. This
module adds those to the generated document once, when it is first asked for.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api import ratings, recommendations
from service.api.schemas import ATTRIBUTE_VALUE_SCHEMA
from service.config import Settings
from service.domain.training import ALGORITHMS

ERROR_REF = {"$ref": "#/components/schemas/Error"}

ERROR_SCHEMAS: dict[str, Any] = {
    "Error": {
        "title": "Error",
        "description": "Every error reply: a code and a message, or a list of problems.",
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code"},
            "detail": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}},
                ]
            },
            "error_count": {"type": "integer", "description": "problems in all (a 422 batch)"},
            "request_id": {"type": "string", "description": "a 500's id, also in X-Request-ID"},
        },
    },
    "Problem": {
        "title": "Problem",
        "description": "One bad value: the field (and for a batch, the row) and what is wrong.",
        "type": "object",
        "required": ["message"],
        "properties": {
            "field": {"type": "string"},
            "row": {"type": "integer"},
            "message": {"type": "string"},
        },
    },
}

COMMON_ERRORS: dict[str, str] = {
    "400": "malformed JSON (`malformed_json`)",
    "401": "no API key (`unauthorized`)",
    "403": "the key is unknown, revoked or lacks the route's scope (`forbidden`)",
    "404": "unknown id (`not_found`)",
    "413": "body over MFSERVE_MAX_BODY_BYTES (`payload_too_large`)",
    "415": "the body is not `application/json` (`unsupported_media_type`)",
    "422": "invalid values, each named by field (`invalid_input`)",
    "503": "the database is unavailable or busy, or no model is trained yet; retry",
}


NEVER_NOT_FOUND = frozenset({("/recommend/{user}", "get"), ("/items/{item}", "put")})
"""Operations with a path id that answer for any id (popularity fallback, created item)."""


def install_contract(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` return the completed document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            complete_document(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete_document(document: dict[str, Any], settings: Settings) -> None:
    """Add the hand-parsed bodies, the error replies and the settings' limits."""
    paths = document.setdefault("paths", {})
    paths["/recommend/{user}"] = {"get": copy.deepcopy(recommendations.RECOMMEND_OPERATION)}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(ratings.BODY_COMPONENTS)
    schemas.update(ERROR_SCHEMAS)
    schemas["AttributeValue"] = ATTRIBUTE_VALUE_SCHEMA
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _declare_errors(path, operation, (path, method) not in NEVER_NOT_FOUND)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _apply_limits(document, settings)


def _declare_errors(path: str, operation: dict[str, Any], may_not_find: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters = operation.get("parameters", [])
    statuses = set()
    if path != "/healthz":
        statuses.add("503")
    if parameters or "requestBody" in operation:
        statuses.add("422")
    if "requestBody" in operation:
        statuses.update({"400", "413", "415"})
    if operation.get("security"):
        statuses.update({"401", "403"})
    if may_not_find and any(parameter.get("in") == "path" for parameter in parameters):
        statuses.add("404")
    for status in statuses:
        responses.setdefault(status, {"description": COMMON_ERRORS[status]})
    for status, response in responses.items():
        if status.startswith(("4", "5")) and not (path == "/readyz" and status == "503"):
            response["content"] = {"application/json": {"schema": ERROR_REF}}


def _apply_limits(document: dict[str, Any], settings: Settings) -> None:
    """State the limits the routers enforce from the settings in the schemas."""
    schemas = document["components"]["schemas"]
    scale = {"minimum": settings.rating_min, "maximum": settings.rating_max}
    n_range = {"minimum": 1, "maximum": settings.max_recommendations}
    _constrain(schemas, "RatingIn", "rating", scale, nullable=True)
    _constrain(schemas, "HistoryEntry", "rating", scale, nullable=True)
    _constrain(schemas, "RatingBatchIn", "ratings", {"maxItems": settings.max_batch_rows})
    for name in ("AnonymousRecommendIn", "BatchRecommendIn"):
        _constrain(schemas, name, "n", n_range)
    _constrain(schemas, "AnonymousRecommendIn", "history", {"maxItems": settings.max_history_items})
    _constrain(schemas, "FoldInIn", "history", {"maxItems": settings.max_history_items})
    _constrain(schemas, "ScoresIn", "history", {"maxItems": settings.max_history_items})
    _constrain(schemas, "ScoresIn", "items", {"maxItems": settings.max_score_items})
    _constrain(schemas, "BatchRecommendIn", "users", {"maxItems": settings.max_batch_users})
    _constrain(schemas, "RetrainIn", "algorithm", {"enum": list(ALGORITHMS)}, nullable=True)
    for path in ("/recommend/{user}", "/items/{item}/similar"):
        for parameter in document["paths"][path]["get"].get("parameters", []):
            if parameter["name"] == "n":
                parameter["schema"] = {**parameter["schema"], **n_range}


def _constrain(
    schemas: dict[str, Any],
    model: str,
    field: str,
    limits: dict[str, Any],
    nullable: bool = False,
) -> None:
    schema = schemas[model]["properties"][field]
    if nullable:
        schema = next(part for part in schema["anyOf"] if part.get("type") != "null")
    schema.update(limits)
