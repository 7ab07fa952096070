"""What the retrain schedule reads: open jobs, the newest job, and ratings stored since."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.jobs import OPEN_STATUSES, TrainingJob
from service.db.tables import ratings


def has_open_job(session: Session) -> bool:
    """Whether any job is queued or running."""
    found = session.execute(
        select(TrainingJob.job_id).where(TrainingJob.status.in_(OPEN_STATUSES)).limit(1)
    ).first()
    return found is not None


def latest_job(session: Session) -> TrainingJob | None:
    """The most recently requested job, of any status."""
    return session.scalars(select(TrainingJob).order_by(TrainingJob.job_id.desc()).limit(1)).first()


def newest_snapshot_watermark(session: Session) -> datetime | None:
    """The newest `stored_at` any job's snapshot reached (None if no job read data)."""
    value: datetime | None = session.execute(
        select(func.max(TrainingJob.snapshot_stored_until))
    ).scalar_one()
    return value


def count_ratings_stored_after(session: Session, after: datetime | None) -> int:
    """How many ratings were written after `after` (all ratings when None)."""
    query = select(func.count()).select_from(ratings)
    if after is not None:
        query = query.where(ratings.c.stored_at > after)
    return int(session.execute(query).scalar_one())
