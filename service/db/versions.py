"""Model versions: the `ModelVersion` record, the active-version pointer, publish, activate, prune.

Every function works inside the caller's transaction and never commits. Publishing and
activation lock the single `active_model` row first, which orders them (and the schedule's
"is a job open?" check) across workers and API processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.orm import (
    Mapped,
    MappedAsDataclass,
    Session,
    column_property,
    composite,
    mapped_column,
)

from service.db.jobs import JobStatus, TrainingJob, finish_job, owned_by, utcnow
from service.db.notifications import notify_activation
from service.db.tables import Base


class ActiveModel(Base):
    """The single row naming the version every API process serves (null before any exists)."""

    __tablename__ = "active_model"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int | None] = mapped_column(ForeignKey("model_versions.version"))
    activated_at: Mapped[datetime | None]


@dataclass(frozen=True)
class VersionSnapshot:
    """The data a version was trained on: the snapshot columns of its row, as one value."""

    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None
    taken_at: datetime
    stored_until: datetime | None


class ModelVersion(MappedAsDataclass, Base, kw_only=True):
    """A trained model published by a job: its artifact, data snapshot and metrics.

    A worker builds one without `version`, `job_id` and `created_at`; `publish_version` sets them.
    Versions compare equal when every field is.
    """

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, init=False)
    algorithm: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    artifact: Mapped[str] = mapped_column(String(255))
    """The artifact's file name, relative to `MFSERVE_ARTIFACT_DIR`."""
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True, init=False
    )
    n_ratings: Mapped[int] = mapped_column(BigInteger)
    n_users: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    newest_rating_at: Mapped[datetime | None]
    """Newest event time among the ratings trained on."""
    snapshot_taken_at: Mapped[datetime]
    stored_until: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(init=False)
    pruned_at: Mapped[datetime | None] = mapped_column(init=False, default=None)
    """When retention deleted the artifact; a pruned version cannot be activated again."""

    snapshot: Mapped[VersionSnapshot] = composite(
        VersionSnapshot,
        "n_ratings",
        "n_users",
        "n_items",
        "newest_rating_at",
        "snapshot_taken_at",
        "stored_until",
        init=False,
    )
    """The snapshot columns as one value."""
    active: Mapped[bool] = column_property(
        exists().where(ActiveModel.version == version).correlate_except(ActiveModel)
    )
    """Whether the pointer names this version (read with the row, not stored in it)."""

    @property
    def available(self) -> bool:
        """Whether its artifact still exists (retention did not remove it)."""
        return self.pruned_at is None


class VersionNotFoundError(LookupError):
    """No model version has this number."""


class VersionUnavailableError(RuntimeError):
    """The version exists but its artifact was pruned by retention."""


def _versions() -> Any:
    """A select of versions that refreshes copies already in the session (the pointer moves)."""
    return select(ModelVersion).execution_options(populate_existing=True)


def lock_pointer(session: Session) -> int | None:
    """Lock the active-version row until the transaction ends; returns the active version."""
    return session.execute(
        select(ActiveModel.version).where(ActiveModel.id == 1).with_for_update()
    ).scalar_one_or_none()


def active_version_number(session: Session) -> int | None:
    """The number of the active version, or None."""
    return session.execute(
        select(ActiveModel.version).where(ActiveModel.id == 1)
    ).scalar_one_or_none()


def get_active_version(session: Session) -> ModelVersion | None:
    """The active version, or None before any was activated."""
    found: ModelVersion | None = session.scalars(
        _versions().join(ActiveModel, ActiveModel.version == ModelVersion.version)
    ).first()
    return found


def get_version(session: Session, version: int) -> ModelVersion:
    """One version; raises VersionNotFoundError."""
    found: ModelVersion | None = session.scalars(
        _versions().where(ModelVersion.version == version)
    ).first()
    if found is None:
        raise VersionNotFoundError(f"no model version {version}")
    return found


def list_versions(
    session: Session, *, limit: int = 50, before: int | None = None
) -> list[ModelVersion]:
    """Versions, newest first; `before` pages by version number."""
    query = _versions().order_by(ModelVersion.version.desc()).limit(limit)
    if before is not None:
        query = query.where(ModelVersion.version < before)
    return list(session.scalars(query))


def _point_at(session: Session, version: int, now: datetime) -> None:
    session.execute(
        update(ActiveModel).where(ActiveModel.id == 1).values(version=version, activated_at=now),
        execution_options={"synchronize_session": False},
    )
    notify_activation(session, version)


def publish_version(
    session: Session,
    job_id: int,
    worker_id: str,
    new: ModelVersion,
    *,
    activate: bool,
    now: datetime | None = None,
) -> ModelVersion | None:
    """Record a version made by a job the worker still owns, end the job succeeded, and
    optionally activate it, all in the caller's transaction; None when the job was not owned."""
    now = now or utcnow()
    lock_pointer(session)
    owner = session.execute(
        select(TrainingJob.job_id).where(owned_by(job_id, worker_id)).with_for_update()
    ).first()
    if owner is None:
        return None
    newest = session.execute(select(func.coalesce(func.max(ModelVersion.version), 0)))
    new.version = int(newest.scalar_one()) + 1
    new.job_id = job_id
    new.created_at = now
    session.add(new)
    session.flush()
    if activate:
        _point_at(session, new.version, now)
    finish_job(
        session,
        job_id,
        worker_id,
        JobStatus.SUCCEEDED,
        metrics=new.metrics,
        version=new.version,
        now=now,
    )
    return get_version(session, new.version)


def activate_version(
    session: Session, version: int, *, now: datetime | None = None
) -> ModelVersion:
    """Make a version the active one (rollback or roll forward).

    Raises VersionNotFoundError, or VersionUnavailableError when its artifact was pruned.
    """
    lock_pointer(session)
    target = get_version(session, version)
    if not target.available:
        raise VersionUnavailableError(
            f"model version {version}'s artifact was removed by retention; it cannot be activated"
        )
    _point_at(session, version, now or utcnow())
    return get_version(session, version)


def prune_candidates(session: Session, keep: int) -> list[ModelVersion]:
    """Unpruned versions beyond the newest `keep`, never the active one."""
    query = (
        _versions()
        .where(ModelVersion.pruned_at.is_(None))
        .order_by(ModelVersion.version.desc())
        .offset(keep)
    )
    return [version for version in session.scalars(query) if not version.active]


def mark_pruned(session: Session, versions: list[int], *, now: datetime | None = None) -> list[int]:
    """Mark versions' artifacts as removed, unless one became active meanwhile; returns those."""
    if not versions:
        return []
    active = lock_pointer(session)
    chosen = [v for v in versions if v != active]
    if chosen:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.version.in_(chosen), ModelVersion.pruned_at.is_(None))
            .values(pruned_at=now or utcnow()),
            execution_options={"synchronize_session": False},
        )
    return chosen


def referenced_artifacts(session: Session) -> set[str]:
    """File names of every artifact a version still refers to (not pruned)."""
    return set(
        session.scalars(select(ModelVersion.artifact).where(ModelVersion.pruned_at.is_(None)))
    )
