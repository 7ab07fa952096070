"""What a worker knows of the job it runs: how training is stopped (`JobInterruptedError`,
`JobLostError`), its own id, and the snapshot's description (re-exported by `worker.loop`)."""

from __future__ import annotations

import os
import socket
import uuid

import numpy as np

from service.db.jobs import JobStatus
from service.db.snapshot import RatingsSnapshot
from service.ml.artifacts import SnapshotInfo


class JobInterruptedError(Exception):
    """Raised from the progress callback to stop training; `status` is the job's end status."""

    def __init__(self, status: JobStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class JobLostError(Exception):
    """Raised to stop training when the job no longer runs under this worker (it was reaped);
    the job's row is someone else's now, so nothing is written to it."""


def make_worker_id() -> str:
    """A worker id unique across hosts and restarts: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def snapshot_info(snapshot: RatingsSnapshot) -> SnapshotInfo:
    """The snapshot's description as packed into the artifact."""
    return SnapshotInfo(
        taken_at=snapshot.taken_at,
        n_ratings=len(snapshot),
        n_users=int(np.unique(snapshot.users).shape[0]),
        n_items=int(np.unique(snapshot.items).shape[0]),
        newest_rating_at=snapshot.newest_rating_at,
        stored_until=snapshot.stored_until,
        history_versions=snapshot.history_versions,
    )
