"""Typed replies of the service. Fields the service adds later are kept (as extra attributes)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Reply(BaseModel):
    """Base of every reply model: immutable, and tolerant of fields it does not declare."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Page(Reply, Generic[T]):
    """One page of a list; `next_cursor` fetches the next one (None: this is the last page)."""

    items: list[T]
    next_cursor: str | None = None


# ratings and items


class IngestResult(Reply):
    """What `post_ratings` stored: new pairs, replaced ratings, and rows that changed nothing."""

    inserted: int
    updated: int
    ignored: int

    def __add__(self, other: IngestResult) -> IngestResult:
        """The counts of two ingests together."""
        return IngestResult(
            inserted=self.inserted + other.inserted,
            updated=self.updated + other.updated,
            ignored=self.ignored + other.ignored,
        )


class UserRating(Reply):
    """One stored rating of a user (`rating` None: an implicit interaction)."""

    item: str
    rating: float | None
    timestamp: datetime


class Item(Reply):
    """An item and its metadata."""

    item: str
    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    updated_at: datetime


class UserAttributes(Reply):
    """A user's attributes (strings, numbers, booleans by name)."""

    user: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    updated_at: datetime | None = None


# serving

Source = Literal["model", "foldin", "features", "popular"]


class ScoredItem(Reply):
    """An item and its score."""

    item: str
    score: float


class Recommendation(Reply):
    """A ranked list, the model version that made it, and where the user's vector came from."""

    user: str | None = Field(description="None for an anonymous history")
    model_version: int
    source: Source
    items: list[ScoredItem]

    @property
    def item_ids(self) -> list[str]:
        """The recommended items' ids, best first."""
        return [entry.item for entry in self.items]


class BatchRecommendation(Reply):
    """One ranked list per requested user, in request order."""

    model_version: int
    results: list[Recommendation]


class ItemScore(Reply):
    """An item's score; None for an item the model does not know."""

    item: str
    score: float | None


class Scores(Reply):
    """Scores in request order (predicted ratings for explicit models)."""

    model_version: int
    scores: list[ItemScore]
    unknown_items: list[str]

    def as_dict(self) -> dict[str, float | None]:
        """The scores by item id."""
        return {entry.item: entry.score for entry in self.scores}


class FoldIn(Reply):
    """The user vector the served model gives a history."""

    embedding: list[float]
    bias: float | None
    model_version: int
    unknown_items: list[str]


class Similar(Reply):
    """The items most similar to one item (cosine of their factors), best first."""

    item: str
    model_version: int
    items: list[ScoredItem]


# probes


class Health(Reply):
    """The process is alive."""

    status: str


class Readiness(Reply):
    """Whether the service can serve, and the model version it serves (None before any)."""

    status: str
    database: str
    schema_revision: str | None = None
    model_version: int | None = None
    model_algorithm: str | None = None
    model_error: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the service said it is ready."""
        return self.status == "ready"


# admin


class JobStatus(StrEnum):
    """Where a training job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Whether the job can change no more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobAccepted(Reply):
    """A queued training job."""

    job_id: int
    status: JobStatus


class Progress(Reply):
    """Training progress, updated after every epoch."""

    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    phase: str | None = None
    """"training" (on the training slice), then "refit" (on the whole snapshot)."""


class Job(Reply):
    """A training job with live progress and, once ended, its metrics or error."""

    job_id: int
    status: JobStatus
    algorithm: str
    config: dict[str, Any]
    requested_by: str
    cancel_requested: bool
    progress: Progress
    metrics: dict[str, Any] | None = None
    error: str | None = None
    version: int | None = Field(default=None, description="the model version this job published")
    worker_id: str | None = None
    snapshot: dict[str, Any] | None = None
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None


class Snapshot(Reply):
    """The data a model version was trained on."""

    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None = None
    taken_at: datetime
    stored_until: datetime | None = None


class ModelVersion(Reply):
    """A published model version."""

    version: int
    algorithm: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    active: bool
    served: bool = Field(description="whether the API process that answered serves it now")
    available: bool = Field(description="False once retention removed its artifact")
    job_id: int | None = None
    artifact: str
    sha256: str
    size_bytes: int
    snapshot: Snapshot
