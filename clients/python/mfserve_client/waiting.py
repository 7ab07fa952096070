"""When `wait_for_job` stops: the job ended (and its version is served), failed, or time ran out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mfserve_client.errors import JobFailedError, JobWaitTimeoutError
from mfserve_client.models import Job, JobStatus, Readiness


@dataclass
class JobWait:
    """The state of one `wait_for_job`: what ends it and by when."""

    timeout: float | None
    raise_on_failure: bool
    started: float = field(default_factory=time.monotonic)

    def ended(self, job: Job) -> bool:
        """Whether `job` is over; raises `JobFailedError` for a failed or cancelled one."""
        if not job.status.ended:
            return False
        if job.status is not JobStatus.SUCCEEDED and self.raise_on_failure:
            raise JobFailedError(job)
        return True

    def check_time(self, job: Job) -> None:
        """Raise `JobWaitTimeoutError` once the wait took longer than `timeout`."""
        if self.timeout is not None and time.monotonic() - self.started > self.timeout:
            raise JobWaitTimeoutError(job, self.timeout)


def serves(readiness: Readiness, job: Job) -> bool:
    """Whether the answering API process serves the job's version (or a newer one)."""
    if job.version is None:
        return True  # nothing was published: nothing to wait for
    return readiness.model_version is not None and readiness.model_version >= job.version
