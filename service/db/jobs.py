"""Training jobs and model versions: queue, claim, heartbeat, progress, publish, activate, prune.

Every function works inside the caller's transaction (a `Session` from `transaction(...,
write=True)` for writes) and never commits. Claiming is safe with many workers: on PostgreSQL
the oldest queued row is locked with `FOR UPDATE SKIP LOCKED`; on SQLite the write transaction
already holds the database's single write lock; on both, the status change is a guarded
`UPDATE ... WHERE status = 'queued'` whose row count is checked, so a job is claimed once.

Publishing and activation lock the single `active_model` row first, which orders them (and the
schedule's "is a job open?" check) across workers and API processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, Row, func, insert, select, update
from sqlalchemy.orm import Session

from service.db.jobs_tables import FINAL_STATUSES, active_model, model_versions, training_jobs
from service.db.notifications import notify_activation
from service.db.tables import ratings

OPEN_STATUSES = ("queued", "running")
"""Statuses of a job that has not ended."""


class JobNotFoundError(LookupError):
    """No training job has this id."""


class VersionNotFoundError(LookupError):
    """No model version has this number."""


class VersionUnavailableError(RuntimeError):
    """The version exists but its artifact was pruned by retention."""


class JobStateError(RuntimeError):
    """The job's status does not allow the requested change (e.g. cancelling a finished job)."""


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobProgress:
    """Where a running job's training stands."""

    epoch: int | None
    epochs: int | None
    loss: float | None
    elapsed_s: float | None
    eta_s: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "loss": self.loss,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
        }


@dataclass(frozen=True)
class JobRecord:
    """One training job as stored."""

    job_id: int
    algorithm: str
    config: dict[str, Any]
    status: str
    requested_by: str
    cancel_requested: bool
    progress: JobProgress
    metrics: dict[str, Any] | None
    error: str | None
    snapshot: dict[str, Any] | None
    snapshot_stored_until: datetime | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    version: int | None


@dataclass(frozen=True)
class VersionRecord:
    """One published model version as stored; `active` tells whether it is served now."""

    version: int
    algorithm: str
    config: dict[str, Any]
    artifact: str
    sha256: str
    size_bytes: int
    job_id: int | None
    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None
    snapshot_taken_at: datetime
    stored_until: datetime | None
    metrics: dict[str, Any]
    created_at: datetime
    pruned_at: datetime | None
    active: bool


@dataclass(frozen=True)
class NewVersion:
    """What a worker publishes: the artifact and the data snapshot it was trained on."""

    algorithm: str
    config: dict[str, Any]
    artifact: str
    sha256: str
    size_bytes: int
    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None
    snapshot_taken_at: datetime
    stored_until: datetime | None
    metrics: dict[str, Any]


@dataclass(frozen=True)
class HeartbeatState:
    """A worker's view of its job after a heartbeat or progress report."""

    owned: bool
    """False when the job is no longer running under this worker (reaped or finished)."""
    cancel_requested: bool


def _write(session: Session, statement: Executable) -> int:
    """Run an UPDATE/INSERT and return how many rows it changed."""
    result = session.execute(statement)
    return int(cast(CursorResult[Any], result).rowcount)


def _job(row: Row[Any]) -> JobRecord:
    m = row._mapping
    return JobRecord(
        job_id=m["id"],
        algorithm=m["algorithm"],
        config=dict(m["config"] or {}),
        status=m["status"],
        requested_by=m["requested_by"],
        cancel_requested=bool(m["cancel_requested"]),
        progress=JobProgress(m["epoch"], m["epochs"], m["loss"], m["elapsed_s"], m["eta_s"]),
        metrics=m["metrics"],
        error=m["error"],
        snapshot=m["snapshot"],
        snapshot_stored_until=m["snapshot_stored_until"],
        requested_at=m["requested_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        heartbeat_at=m["heartbeat_at"],
        worker_id=m["worker_id"],
        version=m["version"],
    )


def _version(row: Row[Any], active: int | None) -> VersionRecord:
    m = row._mapping
    return VersionRecord(
        version=m["version"],
        algorithm=m["algorithm"],
        config=dict(m["config"] or {}),
        artifact=m["artifact"],
        sha256=m["sha256"],
        size_bytes=m["size_bytes"],
        job_id=m["job_id"],
        n_ratings=m["n_ratings"],
        n_users=m["n_users"],
        n_items=m["n_items"],
        newest_rating_at=m["newest_rating_at"],
        snapshot_taken_at=m["snapshot_taken_at"],
        stored_until=m["stored_until"],
        metrics=dict(m["metrics"] or {}),
        created_at=m["created_at"],
        pruned_at=m["pruned_at"],
        active=m["version"] == active,
    )


# ----- jobs ---------------------------------------------------------------------------------------
def enqueue_job(
    session: Session,
    algorithm: str,
    config: dict[str, Any],
    *,
    requested_by: str = "admin",
    now: datetime | None = None,
) -> JobRecord:
    """Queue a training job (the caller validated algorithm and config)."""
    row = session.execute(
        insert(training_jobs)
        .values(
            algorithm=algorithm,
            config=config,
            status="queued",
            requested_by=requested_by,
            cancel_requested=False,
            requested_at=now or utcnow(),
        )
        .returning(*training_jobs.c)
    ).one()
    return _job(row)


def get_job(session: Session, job_id: int) -> JobRecord:
    """One job; raises JobNotFoundError."""
    row = session.execute(select(training_jobs).where(training_jobs.c.id == job_id)).first()
    if row is None:
        raise JobNotFoundError(f"no training job {job_id}")
    return _job(row)


def list_jobs(
    session: Session, *, limit: int = 50, before: int | None = None, status: str | None = None
) -> list[JobRecord]:
    """Jobs, newest first; `before` pages by job id, `status` filters."""
    query = select(training_jobs).order_by(training_jobs.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(training_jobs.c.id < before)
    if status is not None:
        query = query.where(training_jobs.c.status == status)
    return [_job(row) for row in session.execute(query)]


def claim_job(
    session: Session, worker_id: str, *, now: datetime | None = None, attempts: int = 5
) -> JobRecord | None:
    """Mark the oldest queued job running under `worker_id` and return it; None if none."""
    now = now or utcnow()
    for _ in range(attempts):
        candidate = session.execute(
            select(training_jobs.c.id)
            .where(training_jobs.c.status == "queued")
            .order_by(training_jobs.c.requested_at, training_jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if candidate is None:
            return None
        claimed = _write(
            session,
            update(training_jobs)
            .where(training_jobs.c.id == candidate, training_jobs.c.status == "queued")
            .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now),
        )
        if claimed == 1:
            return get_job(session, candidate)
    return None


def _owned(job_id: int, worker_id: str) -> Any:
    return (
        (training_jobs.c.id == job_id)
        & (training_jobs.c.worker_id == worker_id)
        & (training_jobs.c.status == "running")
    )


def _state(session: Session, job_id: int, worker_id: str, updated: int) -> HeartbeatState:
    if updated != 1:
        return HeartbeatState(owned=False, cancel_requested=False)
    cancel = session.execute(
        select(training_jobs.c.cancel_requested).where(training_jobs.c.id == job_id)
    ).scalar_one()
    return HeartbeatState(owned=True, cancel_requested=bool(cancel))


def heartbeat(
    session: Session, job_id: int, worker_id: str, *, now: datetime | None = None
) -> HeartbeatState:
    """Record that the worker still runs the job; tells whether it still owns it, and cancel."""
    result = _write(
        session,
        update(training_jobs).where(_owned(job_id, worker_id)).values(heartbeat_at=now or utcnow()),
    )
    return _state(session, job_id, worker_id, result)


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
        update(training_jobs)
        .where(_owned(job_id, worker_id))
        .values(snapshot=snapshot, snapshot_stored_until=stored_until),
    )
    return _state(session, job_id, worker_id, result)


def record_progress(
    session: Session,
    job_id: int,
    worker_id: str,
    *,
    epoch: int,
    epochs: int,
    loss: float,
    elapsed_s: float,
    now: datetime | None = None,
) -> HeartbeatState:
    """Store an epoch's progress (and an ETA from the mean epoch time); also a heartbeat."""
    eta = elapsed_s / epoch * max(epochs - epoch, 0) if epoch > 0 else None
    result = _write(
        session,
        update(training_jobs)
        .where(_owned(job_id, worker_id))
        .values(
            epoch=epoch,
            epochs=epochs,
            loss=loss if math.isfinite(loss) else None,
            elapsed_s=elapsed_s,
            eta_s=eta,
            heartbeat_at=now or utcnow(),
        ),
    )
    return _state(session, job_id, worker_id, result)


def finish_job(
    session: Session,
    job_id: int,
    worker_id: str,
    status: str,
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
    result = _write(session, update(training_jobs).where(_owned(job_id, worker_id)).values(values))
    return result == 1


def request_cancel(session: Session, job_id: int, *, now: datetime | None = None) -> JobRecord:
    """Cancel a queued job at once, or ask its worker to stop a running one.

    Raises JobNotFoundError, or JobStateError for a job that already ended.
    """
    job = get_job(session, job_id)
    if job.status == "queued":
        result = _write(
            session,
            update(training_jobs)
            .where(training_jobs.c.id == job_id, training_jobs.c.status == "queued")
            .values(
                status="cancelled",
                cancel_requested=True,
                finished_at=now or utcnow(),
                error="cancelled before it started",
            ),
        )
        if result == 1:
            return get_job(session, job_id)
        job = get_job(session, job_id)  # claimed meanwhile: ask the worker instead
    if job.status == "running":
        session.execute(
            update(training_jobs)
            .where(training_jobs.c.id == job_id, training_jobs.c.status == "running")
            .values(cancel_requested=True)
        )
        return get_job(session, job_id)
    raise JobStateError(f"training job {job_id} already ended with status {job.status!r}")


def reap_stale_jobs(
    session: Session, timeout_s: float, *, now: datetime | None = None
) -> list[int]:
    """Fail running jobs whose heartbeat is older than `timeout_s`; returns their ids."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    stale = list(
        session.execute(
            select(training_jobs.c.id, training_jobs.c.worker_id, training_jobs.c.heartbeat_at)
            .where(training_jobs.c.status == "running", training_jobs.c.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    reaped = []
    for job_id, worker_id, beat in stale:
        result = _write(
            session,
            update(training_jobs)
            .where(
                training_jobs.c.id == job_id,
                training_jobs.c.status == "running",
                training_jobs.c.heartbeat_at < cutoff,
            )
            .values(
                status="failed",
                finished_at=now,
                eta_s=None,
                error=(
                    f"worker {worker_id} stopped heartbeating (last heartbeat "
                    f"{beat.isoformat()}, timeout {timeout_s:g} s)"
                ),
            ),
        )
        if result == 1:
            reaped.append(int(job_id))
    return reaped


def fail_own_running_jobs(session: Session, worker_id: str, error: str) -> list[int]:
    """Fail every job still running under `worker_id` (a worker's own crash cleanup)."""
    ids = list(
        session.execute(
            select(training_jobs.c.id).where(
                training_jobs.c.worker_id == worker_id, training_jobs.c.status == "running"
            )
        ).scalars()
    )
    for job_id in ids:
        finish_job(session, job_id, worker_id, "failed", error=error)
    return [int(i) for i in ids]


# ----- schedule -----------------------------------------------------------------------------------
def lock_pointer(session: Session) -> int | None:
    """Lock the active-version row until the transaction ends; returns the active version."""
    return session.execute(
        select(active_model.c.version).where(active_model.c.id == 1).with_for_update()
    ).scalar_one_or_none()


def has_open_job(session: Session) -> bool:
    """Whether any job is queued or running."""
    found = session.execute(
        select(training_jobs.c.id).where(training_jobs.c.status.in_(OPEN_STATUSES)).limit(1)
    ).first()
    return found is not None


def latest_job(session: Session) -> JobRecord | None:
    """The most recently requested job, of any status."""
    row = session.execute(
        select(training_jobs).order_by(training_jobs.c.id.desc()).limit(1)
    ).first()
    return None if row is None else _job(row)


def newest_snapshot_watermark(session: Session) -> datetime | None:
    """The newest `stored_at` any job's snapshot reached (None if no job read data)."""
    value: datetime | None = session.execute(
        select(func.max(training_jobs.c.snapshot_stored_until))
    ).scalar_one()
    return value


def count_ratings_stored_after(session: Session, after: datetime | None) -> int:
    """How many ratings were written after `after` (all ratings when None)."""
    query = select(func.count()).select_from(ratings)
    if after is not None:
        query = query.where(ratings.c.stored_at > after)
    return int(session.execute(query).scalar_one())


# ----- versions -----------------------------------------------------------------------------------
def active_version_number(session: Session) -> int | None:
    """The number of the active version, or None."""
    return session.execute(
        select(active_model.c.version).where(active_model.c.id == 1)
    ).scalar_one_or_none()


def get_active_version(session: Session) -> VersionRecord | None:
    """The active version, or None before any was activated."""
    row = session.execute(
        select(model_versions).join(
            active_model, active_model.c.version == model_versions.c.version
        )
    ).first()
    return None if row is None else _version(row, row._mapping["version"])


def get_version(session: Session, version: int) -> VersionRecord:
    """One version; raises VersionNotFoundError."""
    row = session.execute(select(model_versions).where(model_versions.c.version == version)).first()
    if row is None:
        raise VersionNotFoundError(f"no model version {version}")
    return _version(row, active_version_number(session))


def list_versions(
    session: Session, *, limit: int = 50, before: int | None = None
) -> list[VersionRecord]:
    """Versions, newest first; `before` pages by version number."""
    active = active_version_number(session)
    query = select(model_versions).order_by(model_versions.c.version.desc()).limit(limit)
    if before is not None:
        query = query.where(model_versions.c.version < before)
    return [_version(row, active) for row in session.execute(query)]


def publish_version(
    session: Session,
    job_id: int,
    worker_id: str,
    new: NewVersion,
    *,
    activate: bool,
    now: datetime | None = None,
) -> VersionRecord | None:
    """Record a version made by a job the worker still owns, end the job succeeded, and
    optionally activate it, all in the caller's transaction; None when the job was not owned."""
    now = now or utcnow()
    lock_pointer(session)
    owner = session.execute(
        select(training_jobs.c.id).where(_owned(job_id, worker_id)).with_for_update()
    ).first()
    if owner is None:
        return None
    number = (
        int(
            session.execute(
                select(func.coalesce(func.max(model_versions.c.version), 0))
            ).scalar_one()
        )
        + 1
    )
    session.execute(
        insert(model_versions).values(
            version=number,
            algorithm=new.algorithm,
            config=new.config,
            artifact=new.artifact,
            sha256=new.sha256,
            size_bytes=new.size_bytes,
            job_id=job_id,
            n_ratings=new.n_ratings,
            n_users=new.n_users,
            n_items=new.n_items,
            newest_rating_at=new.newest_rating_at,
            snapshot_taken_at=new.snapshot_taken_at,
            stored_until=new.stored_until,
            metrics=new.metrics,
            created_at=now,
        )
    )
    if activate:
        session.execute(
            update(active_model)
            .where(active_model.c.id == 1)
            .values(version=number, activated_at=now)
        )
        notify_activation(session, number)
    finish_job(
        session, job_id, worker_id, "succeeded", metrics=new.metrics, version=number, now=now
    )
    return get_version(session, number)


def activate_version(
    session: Session, version: int, *, now: datetime | None = None
) -> VersionRecord:
    """Make a version the active one (rollback or roll forward).

    Raises VersionNotFoundError, or VersionUnavailableError when its artifact was pruned.
    """
    lock_pointer(session)
    target = get_version(session, version)
    if target.pruned_at is not None:
        raise VersionUnavailableError(
            f"model version {version}'s artifact was removed by retention; it cannot be activated"
        )
    session.execute(
        update(active_model)
        .where(active_model.c.id == 1)
        .values(version=version, activated_at=now or utcnow())
    )
    notify_activation(session, version)
    return get_version(session, version)


def prune_candidates(session: Session, keep: int) -> list[VersionRecord]:
    """Unpruned versions beyond the newest `keep`, never the active one."""
    active = active_version_number(session)
    rows = session.execute(
        select(model_versions)
        .where(model_versions.c.pruned_at.is_(None))
        .order_by(model_versions.c.version.desc())
        .offset(keep)
    )
    return [v for v in (_version(row, active) for row in rows) if not v.active]


def mark_pruned(session: Session, versions: list[int], *, now: datetime | None = None) -> list[int]:
    """Mark versions' artifacts as removed, unless one became active meanwhile; returns those."""
    if not versions:
        return []
    active = lock_pointer(session)
    chosen = [v for v in versions if v != active]
    if chosen:
        session.execute(
            update(model_versions)
            .where(model_versions.c.version.in_(chosen), model_versions.c.pruned_at.is_(None))
            .values(pruned_at=now or utcnow())
        )
    return chosen


def referenced_artifacts(session: Session) -> set[str]:
    """File names of every artifact a version still refers to (not pruned)."""
    return set(
        session.execute(
            select(model_versions.c.artifact).where(model_versions.c.pruned_at.is_(None))
        ).scalars()
    )
