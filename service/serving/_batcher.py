"""Micro-batching of the scoring work of concurrent requests, in one dedicated thread.

Every ranking call of the serving routes becomes a job. When the scoring thread is idle, a job
starts at once (one client pays only the hop to the thread). While it computes, the event loop
keeps parsing HTTP on the other core, and the jobs that arrive meanwhile wait; when the thread is
done, all of them go together as the next batch: one matrix product and one `topk` per item
table for the whole batch, instead of one per request. Torch releases the GIL while it computes,
so the thread and the loop run side by side; one thread (not a pool) keeps the two cores for
the loop and the math instead of for threads fighting over the GIL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_BATCH_JOBS = 256
"""Jobs run together at most (more wait for the next batch)."""


@dataclass
class Job(Generic[T]):
    """One request's share of a batch: what to compute, and where its answer goes."""

    payload: Any
    future: asyncio.Future[T]


BatchFunction = Callable[[Sequence[Any]], list[Any]]
"""Computes the answers of a batch of payloads, one per payload (an exception instance fails
only that payload's request)."""


class Batcher:
    """Runs a batch function in one dedicated thread, merging the jobs that queue up meanwhile."""

    def __init__(self, compute: BatchFunction, name: str = "mfserve-scoring") -> None:
        self._compute = compute
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: list[Job[Any]] = []
        self._busy = False
        self.batches = 0
        self.jobs = 0

    async def submit(self, payload: Any) -> Any:
        """The answer for one payload, computed in the next batch (at once when idle)."""
        loop = asyncio.get_running_loop()
        job: Job[Any] = Job(payload, loop.create_future())
        self._pending.append(job)
        if not self._busy:
            self._launch(loop)
        return await job.future

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._pending[:MAX_BATCH_JOBS]
        del self._pending[:MAX_BATCH_JOBS]
        self._busy = True
        self.batches += 1
        self.jobs += len(jobs)
        done = self._executor.submit(self._run, [job.payload for job in jobs])
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, loop, jobs, f))

    def _run(self, payloads: list[Any]) -> list[Any]:
        return self._compute(payloads)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        jobs: list[Job[Any]],
        done: concurrent.futures.Future[list[Any]],
    ) -> None:
        self._busy = False
        error = done.exception()
        answers: list[Any] = [error] * len(jobs) if error is not None else done.result()
        for job, answer in zip(jobs, answers, strict=True):
            if job.future.done():  # the request was cancelled (client gone)
                continue
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)
        if self._pending:
            self._launch(loop)

    def close(self) -> None:
        """Stop the thread once the batch in progress is done."""
        self._executor.shutdown(wait=True)
