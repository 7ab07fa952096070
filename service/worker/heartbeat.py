"""A thread that heartbeats a running job and notices cancel requests and lost ownership."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs
from service.db.session import transaction

log = logging.getLogger(__name__)


class Heartbeat:
    """Heartbeats one job every `interval_s` while its `with` block runs.

    `cancel` is set when an admin asked to cancel the job, `lost` when the job no longer runs
    under this worker (the reaper failed it); the training callback reads both.
    """

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, worker_id: str, interval_s: float
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-job-{job_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with transaction(self._sessions) as session:
                    state = jobs.heartbeat(session, self._job_id, self._worker_id)
            except Exception as exc:  # keep trying; the reaper decides when it is too late
                log.warning("heartbeat of job %d failed: %s", self._job_id, exc)
                continue
            if not state.owned:
                self.lost.set()
                return
            if state.cancel_requested:
                self.cancel.set()
