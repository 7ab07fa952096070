"""Tables of the training worker: training jobs, model versions and the active-version pointer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db.tables import Base

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
"""Every status a training job can have; the last three are final."""

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
"""Statuses a job never leaves."""

JOB_REQUESTERS = ("admin", "schedule")
"""Who asked for a job: `POST /admin/retrain` or the worker's schedule."""


class TrainingJob(Base):
    """One request to train a model, and what became of it."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"
        ),
        CheckConstraint("requested_by IN ('admin', 'schedule')", name="requested_by"),
        # The claim query reads the oldest queued job; the reaper reads running ones.
        Index("ix_training_jobs_status_requested_at", "status", "requested_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(16))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by a cancel of a running job; the worker stops at its next progress report."""
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    """Estimated seconds of training left, from the mean epoch time so far."""
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Sizes and times of the data the job read (without per-user detail)."""
    snapshot_stored_until: Mapped[datetime | None]
    """Newest `stored_at` among the ratings the job read; the schedule counts ratings after it."""
    requested_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer)
    """The model version this job published (no foreign key: versions refer to their job)."""


class ModelVersion(Base):
    """A trained model published by a job: its artifact, data snapshot and metrics."""

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    algorithm: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[str] = mapped_column(String(255))
    """The artifact's file name, relative to `MFSERVE_ARTIFACT_DIR`."""
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True
    )
    n_ratings: Mapped[int] = mapped_column(BigInteger)
    n_users: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    newest_rating_at: Mapped[datetime | None]
    """Newest event time among the ratings trained on."""
    snapshot_taken_at: Mapped[datetime]
    stored_until: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    pruned_at: Mapped[datetime | None]
    """When retention deleted the artifact; a pruned version cannot be activated again."""


class ActiveModel(Base):
    """The single row naming the version every API process serves (null before any exists)."""

    __tablename__ = "active_model"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int | None] = mapped_column(ForeignKey("model_versions.version"))
    activated_at: Mapped[datetime | None]


training_jobs = cast(Table, TrainingJob.__table__)
model_versions = cast(Table, ModelVersion.__table__)
active_model = cast(Table, ActiveModel.__table__)
