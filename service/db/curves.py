"""Training curves: one `CurvePoint` per epoch of a job's training, kept after the job ends.

The worker records a point beside each progress report, in the same transaction, so a job's
curve and its live progress never disagree. A job's training may run in phases (`training` on
the training slice, then `refit` on the whole snapshot); each phase has its own epochs.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Float, ForeignKey, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.db.jobs import JobPhase, utcnow
from service.db.tables import Base

class CurvePoint(Base):
    """One epoch of a job's training: its loss and, where measured, the validation RMSE."""

    __tablename__ = "training_curve_points"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    epochs: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    validation_rmse: Mapped[float | None] = mapped_column(Float)
    """RMSE on the validation slice after this epoch, for models that measure it per epoch."""
    elapsed_s: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def record_point(
    session: Session,
    job_id: int,
    *,
    epoch: int,
    epochs: int,
    loss: float | None,
    elapsed_s: float,
    validation_rmse: float | None = None,
    phase: str = JobPhase.TRAINING,
    now: datetime | None = None,
) -> None:
    """Store one epoch of a job's curve (a repeated epoch of the same phase replaces it)."""
    values: dict[str, Any] = {
        "epochs": epochs,
        "loss": _finite(loss),
        "validation_rmse": _finite(validation_rmse),
        "elapsed_s": elapsed_s,
        "recorded_at": now or utcnow(),
    }
    result = session.execute(
        update(CurvePoint)
        .where(CurvePoint.job_id == job_id, CurvePoint.phase == phase, CurvePoint.epoch == epoch)
        .values(values),
        execution_options={"synchronize_session": False},
    )
    if int(cast(CursorResult[Any], result).rowcount) == 0:
        session.add(CurvePoint(job_id=job_id, phase=phase, epoch=epoch, **values))
        session.flush()


def read_curve(session: Session, job_id: int) -> list[CurvePoint]:
    """A job's curve points in the order they were recorded (phase by phase, epoch by epoch)."""
    query = (
        select(CurvePoint)
        .where(CurvePoint.job_id == job_id)
        .order_by(CurvePoint.recorded_at, CurvePoint.phase, CurvePoint.epoch)
    )
    return list(session.scalars(query))
