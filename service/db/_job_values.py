"""The values a training job's row holds besides its columns: status, requester, phase and
progress (re-exported by `service.db.jobs`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Every status a training job can have; succeeded, failed and cancelled are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
"""Statuses a job never leaves."""

OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
"""Statuses of a job that has not ended."""


class JobRequester(StrEnum):
    """Who asked for a job: `POST /admin/retrain` or the worker's schedule."""

    ADMIN = "admin"
    SCHEDULE = "schedule"


class JobPhase(StrEnum):
    """What a running job is training: the model on the training slice (evaluated and gated),
    then the same config on the whole snapshot (the model that is published)."""

    TRAINING = "training"
    REFIT = "refit"


@dataclass(frozen=True)
class JobProgress:
    """Where a running job's training stands: the progress columns of its row, as one value."""

    epoch: int | None
    epochs: int | None
    loss: float | None
    elapsed_s: float | None
    eta_s: float | None
    """Estimated seconds of training left, from the mean epoch time so far."""
    phase: str | None = None
    """"training" (on the training slice) or "refit" (on the whole snapshot)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)
