"""Training jobs: the `TrainingJob` record and its queue, claim, heartbeat, progress and end.

Every function works inside the caller's transaction (a `Session` from `transaction(...,
write=True)` for writes) and never commits. Claiming is safe with many workers: on PostgreSQL
the oldest queued row is locked with `FOR UPDATE SKIP LOCKED`; on SQLite the write transaction
already holds the database's single write lock; on both, the status change is a guarded
`UPDATE ... WHERE status = 'queued'` whose row count is checked, so a job is claimed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    CursorResult,
    Executable,
    Float,
    Index,
    Integer,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, composite, mapped_column

from service.db._job_values import FINAL_STATUSES as FINAL_STATUSES
from service.db._job_values import OPEN_STATUSES as OPEN_STATUSES
from service.db._job_values import JobPhase as JobPhase
from service.db._job_values import JobProgress as JobProgress
from service.db._job_values import JobRequester as JobRequester
from service.db._job_values import JobStatus as JobStatus
from service.db.tables import Base, check_one_of, enum_column


class TrainingJob(Base):
    """One request to train a model, and what became of it."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        check_one_of("status", JobStatus),
        check_one_of("requested_by", JobRequester),
        # The claim query reads the oldest queued job; the reaper reads running ones.
        Index("ix_training_jobs_status_requested_at", "status", "requested_at"),
    )

    job_id: Mapped[int] = mapped_column("id", Integer, primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus))
    requested_by: Mapped[JobRequester] = mapped_column(enum_column(JobRequester))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by a cancel of a running job; the worker stops at its next progress report."""
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    """Estimated seconds of training left, from the mean epoch time so far."""
    phase: Mapped[str | None] = mapped_column(String(16))
    """The `JobPhase` the progress columns describe."""
    metrics: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    snapshot: Mapped[dict[str, Any] | None]
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

    progress: Mapped[JobProgress] = composite(
        JobProgress, "epoch", "epochs", "loss", "elapsed_s", "eta_s", "phase"
    )
    """The progress columns as one value."""


class JobNotFoundError(LookupError):
    """No training job has this id."""


class JobStateError(RuntimeError):
    """The job's status does not allow the requested change (e.g. cancelling a finished job)."""


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class HeartbeatState:
    """A worker's view of its job after a heartbeat or progress report."""

    owned: bool
    """False when the job is no longer running under this worker (reaped or finished)."""
    cancel_requested: bool


def _write(session: Session, statement: Executable) -> int:
    """Run an UPDATE and return how many rows it changed."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(cast(CursorResult[Any], result).rowcount)


def enqueue_job(
    session: Session,
    algorithm: str,
    config: dict[str, Any],
    *,
    requested_by: JobRequester = JobRequester.ADMIN,
    now: datetime | None = None,
) -> TrainingJob:
    """Queue a training job (the caller validated algorithm and config)."""
    job = TrainingJob(
        algorithm=algorithm,
        config=config,
        status=JobStatus.QUEUED,
        requested_by=requested_by,
        cancel_requested=False,
        requested_at=now or utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> TrainingJob:
    """One job as stored now (also when an older copy sits in the session); JobNotFoundError."""
    query = select(TrainingJob).where(TrainingJob.job_id == job_id)
    job = session.scalars(query.execution_options(populate_existing=True)).first()
    if job is None:
        raise JobNotFoundError(f"no training job {job_id}")
    return job


def list_jobs(
    session: Session, *, limit: int = 50, before: int | None = None, status: JobStatus | None = None
) -> list[TrainingJob]:
    """Jobs, newest first; `before` pages by job id, `status` filters."""
    query = select(TrainingJob).order_by(TrainingJob.job_id.desc()).limit(limit)
    if before is not None:
        query = query.where(TrainingJob.job_id < before)
    if status is not None:
        query = query.where(TrainingJob.status == status)
    return list(session.scalars(query))


def claim_job(
    session: Session, worker_id: str, *, now: datetime | None = None, attempts: int = 5
) -> TrainingJob | None:
    """Mark the oldest queued job running under `worker_id` and return it; None if none."""
    now = now or utcnow()
    for _ in range(attempts):
        candidate = session.execute(
            select(TrainingJob.job_id)
            .where(TrainingJob.status == JobStatus.QUEUED)
            .order_by(TrainingJob.requested_at, TrainingJob.job_id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if candidate is None:
            return None
        claimed = _write(
            session,
            update(TrainingJob)
            .where(TrainingJob.job_id == candidate, TrainingJob.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING, worker_id=worker_id, started_at=now, heartbeat_at=now
            ),
        )
        if claimed == 1:
            return get_job(session, candidate)
    return None


def owned_by(job_id: int, worker_id: str) -> ColumnElement[bool]:
    """The condition that a job is running under `worker_id`."""
    return (
        (TrainingJob.job_id == job_id)
        & (TrainingJob.worker_id == worker_id)
        & (TrainingJob.status == JobStatus.RUNNING)
    )


def _state(session: Session, job_id: int, updated: int) -> HeartbeatState:
    if updated != 1:
        return HeartbeatState(owned=False, cancel_requested=False)
    cancel = session.execute(
        select(TrainingJob.cancel_requested).where(TrainingJob.job_id == job_id)
    ).scalar_one()
    return HeartbeatState(owned=True, cancel_requested=bool(cancel))


def heartbeat(
    session: Session, job_id: int, worker_id: str, *, now: datetime | None = None
) -> HeartbeatState:
    """Record that the worker still runs the job; tells whether it still owns it, and cancel."""
    result = _write(
        session,
        update(TrainingJob).where(owned_by(job_id, worker_id)).values(heartbeat_at=now or utcnow()),
    )
    return _state(session, job_id, result)


def record_snapshot(
    session: Session,
    job_id: int,
    worker_id: str,
    snapshot: dict[str, Any],
    stored_until: datetime | None,
) -> HeartbeatState:
    """Record which data the job read (its sizes and the newest stored time)."""
    result = _write(
        session,
        update(TrainingJob)
        .where(owned_by(job_id, worker_id))
        .values(snapshot=snapshot, snapshot_stored_until=stored_until),
    )
    return _state(session, job_id, result)


def record_progress(
    session: Session,
    job_id: int,
    worker_id: str,
    *,
    epoch: int,
    epochs: int,
    loss: float,
    elapsed_s: float,
    phase: JobPhase = JobPhase.TRAINING,
    now: datetime | None = None,
) -> HeartbeatState:
    """Store an epoch's progress (and an ETA from the mean epoch time); also a heartbeat."""
    eta = elapsed_s / epoch * max(epochs - epoch, 0) if epoch > 0 else None
    result = _write(
        session,
        update(TrainingJob)
        .where(owned_by(job_id, worker_id))
        .values(
            epoch=epoch,
            epochs=epochs,
            loss=loss if math.isfinite(loss) else None,
            elapsed_s=elapsed_s,
            eta_s=eta,
            phase=phase,
            heartbeat_at=now or utcnow(),
        ),
    )
    return _state(session, job_id, result)


def finish_job(
    session: Session,
    job_id: int,
    worker_id: str,
    status: JobStatus,
    *,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
    version: int | None = None,
    now: datetime | None = None,
) -> bool:
    """End a running job owned by `worker_id` with a final status; False if it was not."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": now or utcnow(), "eta_s": None}
    if metrics is not None:
        values["metrics"] = metrics
    if error is not None:
        values["error"] = error
    if version is not None:
        values["version"] = version
    result = _write(session, update(TrainingJob).where(owned_by(job_id, worker_id)).values(values))
    return result == 1


def request_cancel(session: Session, job_id: int, *, now: datetime | None = None) -> TrainingJob:
    """Cancel a queued job at once, or ask its worker to stop a running one.

    Raises JobNotFoundError, or JobStateError for a job that already ended.
    """
    job = get_job(session, job_id)
    if job.status == JobStatus.QUEUED:
        result = _write(
            session,
            update(TrainingJob)
            .where(TrainingJob.job_id == job_id, TrainingJob.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.CANCELLED,
                cancel_requested=True,
                finished_at=now or utcnow(),
                error="cancelled before it started",
            ),
        )
        if result == 1:
            return get_job(session, job_id)
        job = get_job(session, job_id)  # claimed meanwhile: ask the worker instead
    if job.status == JobStatus.RUNNING:
        _write(
            session,
            update(TrainingJob)
            .where(TrainingJob.job_id == job_id, TrainingJob.status == JobStatus.RUNNING)
            .values(cancel_requested=True),
        )
        return get_job(session, job_id)
    raise JobStateError(f"training job {job_id} already ended with status {job.status.value!r}")


def reap_stale_jobs(
    session: Session, timeout_s: float, *, now: datetime | None = None
) -> list[int]:
    """Fail running jobs whose heartbeat is older than `timeout_s`; returns their ids."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    stale = list(
        session.execute(
            select(TrainingJob.job_id, TrainingJob.worker_id, TrainingJob.heartbeat_at)
            .where(TrainingJob.status == JobStatus.RUNNING, TrainingJob.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    reaped = []
    for job_id, worker_id, beat in stale:
        last = "never" if beat is None else beat.isoformat()  # the query matched beat < cutoff
        result = _write(
            session,
            update(TrainingJob)
            .where(
                TrainingJob.job_id == job_id,
                TrainingJob.status == JobStatus.RUNNING,
                TrainingJob.heartbeat_at < cutoff,
            )
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                eta_s=None,
                error=(
                    f"worker {worker_id} stopped heartbeating (last heartbeat "
                    f"{last}, timeout {timeout_s:g} s)"
                ),
            ),
        )
        if result == 1:
            reaped.append(int(job_id))
    return reaped
