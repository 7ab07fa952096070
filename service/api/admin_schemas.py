"""Bodies of the admin API and the model-version listings, as in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.db.jobs import JobRecord, VersionRecord


class RetrainIn(BaseModel):
    """A retrain request; without `algorithm` the configured default algorithm and config."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str | None = Field(default=None, examples=["als-biased"])
    config: dict[str, Any] | None = Field(default=None, examples=[{"epochs": 10}])


class JobAccepted(BaseModel):
    """A queued job."""

    job_id: int
    status: str


class ProgressOut(BaseModel):
    """Training progress, updated after every epoch."""

    epoch: int | None
    epochs: int | None
    loss: float | None
    elapsed_s: float | None
    eta_s: float | None = Field(description="estimated seconds of training left")


class JobOut(BaseModel):
    """A training job with live progress and, once ended, its metrics or error."""

    job_id: int
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    algorithm: str
    config: dict[str, Any]
    requested_by: str = Field(description="admin or schedule")
    cancel_requested: bool
    progress: ProgressOut
    metrics: dict[str, Any] | None
    error: str | None
    version: int | None = Field(description="the model version this job published")
    worker_id: str | None
    snapshot: dict[str, Any] | None = Field(description="sizes and times of the data read")
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        """From the stored record."""
        return cls(
            job_id=job.job_id,
            status=job.status,
            algorithm=job.algorithm,
            config=job.config,
            requested_by=job.requested_by,
            cancel_requested=job.cancel_requested,
            progress=ProgressOut(**job.progress.as_dict()),
            metrics=job.metrics,
            error=job.error,
            version=job.version,
            worker_id=job.worker_id,
            snapshot=job.snapshot,
            requested_at=job.requested_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            heartbeat_at=job.heartbeat_at,
        )


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class SnapshotOut(BaseModel):
    """The data a version was trained on."""

    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None
    taken_at: datetime
    stored_until: datetime | None


class VersionOut(BaseModel):
    """A published model version."""

    version: int
    algorithm: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    active: bool = Field(description="whether it is the active version")
    served: bool = Field(description="whether this API process serves it right now")
    available: bool = Field(description="false once retention removed its artifact")
    job_id: int | None
    artifact: str
    sha256: str
    size_bytes: int
    snapshot: SnapshotOut

    @classmethod
    def of(cls, version: VersionRecord, served_version: int | None) -> VersionOut:
        """From the stored record and the version this process serves."""
        return cls(
            version=version.version,
            algorithm=version.algorithm,
            config=version.config,
            metrics=version.metrics,
            created_at=version.created_at,
            active=version.active,
            served=version.version == served_version,
            available=version.pruned_at is None,
            job_id=version.job_id,
            artifact=version.artifact,
            sha256=version.sha256,
            size_bytes=version.size_bytes,
            snapshot=SnapshotOut(
                n_ratings=version.n_ratings,
                n_users=version.n_users,
                n_items=version.n_items,
                newest_rating_at=version.newest_rating_at,
                taken_at=version.snapshot_taken_at,
                stored_until=version.stored_until,
            ),
        )


class VersionPage(BaseModel):
    """A page of model versions, newest first."""

    items: list[VersionOut]
    next_cursor: str | None


class RecommendedItem(BaseModel):
    """One recommended item and its score."""

    item: str
    score: float


class RecommendationOut(BaseModel):
    """A user's recommendations and the model version that made them."""

    user: str
    model_version: int
    source: str = Field(description='"model" (stored embedding) or "popular" (fallback)')
    items: list[RecommendedItem]
