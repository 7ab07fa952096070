"""Request and response bodies as they appear in the OpenAPI document."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.db.tables import EXTERNAL_ID_LENGTH

ID_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
"""Any characters but control characters (lone surrogates are refused too)."""

_C = "\\x00-\\x1f\\x7f-\\x9f"
PATH_ID_PATTERN = f"^([^./{_C}][^/{_C}]*|\\.[^./{_C}][^/{_C}]*|\\.\\.[^/{_C}]+)$"
"""An id in a path: no control characters and no `/`, and not `.` or `..` (which URLs drop)."""

PATH_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": EXTERNAL_ID_LENGTH,
    "pattern": PATH_ID_PATTERN,
}
"""The schema of an id in a path."""

QUERY_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": EXTERNAL_ID_LENGTH,
    "pattern": ID_PATTERN,
}
"""The schema of an id in a query parameter."""

TEXT_PATTERN = "^[^\\x00]*$"
"""Free text: anything but NUL, which PostgreSQL cannot store (nor lone surrogates)."""

ExternalId = Annotated[str, Field(min_length=1, max_length=EXTERNAL_ID_LENGTH, pattern=ID_PATTERN)]
"""A user or item id in a body: 1 to 128 characters, no control characters."""

Tag = ExternalId

ATTRIBUTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": TEXT_PATTERN},
    "additionalProperties": {"$ref": "#/components/schemas/AttributeValue"},
}
ATTRIBUTE_VALUE_SCHEMA: dict[str, Any] = {
    "title": "AttributeValue",
    "description": "Any JSON value; strings (and keys) without NUL, numbers finite.",
    "anyOf": [
        {"type": "string", "pattern": TEXT_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": "#/components/schemas/AttributeValue"}},
        ATTRIBUTES_SCHEMA,
    ],
}


def storable_problem(value: object) -> str | None:
    """Why a JSON value cannot be stored on every backend (NUL, lone surrogates, NaN)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must not contain lone surrogates"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, list):
        return next((p for p in map(storable_problem, value) if p is not None), None)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = storable_problem(key) or storable_problem(item)
            if problem is not None:
                return problem
    return None


def _storable(value: Any) -> Any:
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Storable = AfterValidator(_storable)


class RatingIn(BaseModel):
    """One rating; a null or absent `rating` is an implicit interaction, `timestamp` is now."""

    model_config = ConfigDict(extra="forbid")

    user: ExternalId = Field(examples=["alice"])
    item: ExternalId = Field(examples=["tt0111161"])
    rating: float | None = Field(default=None, examples=[4.5])
    timestamp: datetime | float | None = Field(
        default=None,
        description="ISO 8601 (UTC when no offset) or epoch seconds; at most a day ahead",
        examples=["2024-05-01T12:00:00Z"],
    )


class RatingBatchIn(BaseModel):
    """Up to `MFSERVE_MAX_BATCH_ROWS` ratings, stored all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    ratings: list[RatingIn] = Field(min_length=1)


class IngestResult(BaseModel):
    """What a `POST /ratings` stored."""

    inserted: int = Field(description="(user, item) pairs rated for the first time")
    updated: int = Field(description="stored ratings replaced by a newer (or equally new) one")
    ignored: int = Field(
        description="rows older than the stored rating, or superseded within the batch"
    )


class UserRatingOut(BaseModel):
    """One rating of a user."""

    item: str
    rating: float | None
    timestamp: datetime


class UserRatingsPage(BaseModel):
    """A page of a user's ratings, in a stable order."""

    items: list[UserRatingOut]
    next_cursor: str | None


class ItemIn(BaseModel):
    """An item's metadata; PUT replaces all of it."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str | None, Storable] = Field(
        default=None,
        max_length=1000,
        pattern=TEXT_PATTERN,
        examples=["The Shawshank Redemption"],
    )
    tags: list[Tag] = Field(default_factory=list, max_length=100, examples=[["drama"]])
    attributes: Annotated[dict[str, Any], Storable] = Field(
        default_factory=dict, examples=[{"year": 1994}], json_schema_extra=ATTRIBUTES_SCHEMA
    )


class ItemOut(BaseModel):
    """An item and its metadata."""

    item: str
    title: str | None
    tags: list[str]
    attributes: dict[str, Any]
    updated_at: datetime


class ItemsPage(BaseModel):
    """A page of items, in a stable order."""

    items: list[ItemOut]
    next_cursor: str | None


class Health(BaseModel):
    """The process is alive."""

    status: str = "ok"


class Readiness(BaseModel):
    """Whether the service can serve: database reachable and schema at head (and more later)."""

    model_config = ConfigDict(extra="allow")

    status: str
    database: str
    schema_revision: str | None = None
