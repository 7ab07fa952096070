"""Request and response bodies as they appear in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import EXTERNAL_ID_LENGTH

Tag = Annotated[str, Field(min_length=1, max_length=EXTERNAL_ID_LENGTH)]


class RatingIn(BaseModel):
    """One rating; a null or absent `rating` is an implicit interaction, `timestamp` is now."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=EXTERNAL_ID_LENGTH, examples=["alice"])
    item: str = Field(min_length=1, max_length=EXTERNAL_ID_LENGTH, examples=["tt0111161"])
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

    title: str | None = Field(default=None, max_length=1000, examples=["The Shawshank Redemption"])
    tags: list[Tag] = Field(default_factory=list, max_length=100, examples=[["drama"]])
    attributes: dict[str, Any] = Field(default_factory=dict, examples=[{"year": 1994}])


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
