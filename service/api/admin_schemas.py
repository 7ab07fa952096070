"""Bodies of the admin API and the model-version listings, as in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.db.jobs import JobProgress, JobRequester, JobStatus, TrainingJob
from service.db.versions import ModelVersion, VersionSnapshot


class RetrainIn(BaseModel):
    """A retrain request; without `algorithm` the configured default algorithm and config."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str | None = Field(default=None, examples=["als-biased"])
    config: dict[str, Any] | None = Field(default=None, examples=[{"epochs": 10}])


class JobAccepted(BaseModel):
    """A queued job."""

    job_id: int
    status: JobStatus


class JobOut(BaseModel):
    """A training job with live progress and, once ended, its metrics or error."""

    model_config = ConfigDict(from_attributes=True)

    job_id: int
    status: JobStatus
    algorithm: str
    config: dict[str, Any]
    requested_by: JobRequester
    cancel_requested: bool
    progress: JobProgress = Field(description="training progress, updated after every epoch")
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
    def of(cls, job: TrainingJob) -> JobOut:
        """From the stored record."""
        return cls.model_validate(job)


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class VersionOut(BaseModel):
    """A published model version."""

    # `served` is set from this process's state after validation; it is in every reply.
    model_config = ConfigDict(
        from_attributes=True, json_schema_serialization_defaults_required=True
    )

    version: int
    algorithm: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    active: bool = Field(description="whether it is the active version")
    served: bool = Field(default=False, description="whether this API process serves it right now")
    available: bool = Field(description="false once retention removed its artifact")
    job_id: int | None
    artifact: str
    sha256: str
    size_bytes: int
    snapshot: VersionSnapshot = Field(description="the data the version was trained on")

    @classmethod
    def of(cls, version: ModelVersion, served_version: int | None) -> VersionOut:
        """From the stored record and the version this process serves."""
        out = cls.model_validate(version)
        out.served = version.version == served_version
        return out


class VersionPage(BaseModel):
    """A page of model versions, newest first."""

    items: list[VersionOut]
    next_cursor: str | None
