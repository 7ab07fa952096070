"""Micro-batching of the scoring work of concurrent requests.

Every ranking call of the serving routes becomes a job. Batches run on the event loop: the
first job of a loop pass launches one at the end of the pass (so the requests that arrived
together go together); at most `MAX_BATCHES_IN_FLIGHT` are under way, and jobs arriving
meanwhile wait for a free slot. One batch costs one database read and one matrix product and
`topk` per item table, instead of one per request.

A batch hands its heavy, GIL-free step to one dedicated thread with `offload`: the matrix
product and `topk` (torch releases the GIL while they compute). Nothing else goes there: every
call into a thread must take the GIL back when it returns, and a thread waiting for the GIL
while the loop is busy waits up to the interpreter's switch interval, so Python work moved to a
thread costs more than it saves. The loop keeps parsing HTTP on one core while the product runs
on the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_BATCH_JOBS = 256
"""Jobs run together at most (more wait for the next batch)."""

MAX_BATCHES_IN_FLIGHT = 2
"""Batches under way at once: while one waits for the thread, the next one reads and prepares,
so the loop does not idle waiting for a batch to come back."""


@dataclass
class Job(Generic[T]):
    """One request's share of a batch: what to compute, and where its answer goes."""

    payload: Any
    future: asyncio.Future[T]


Offload = Callable[..., Awaitable[Any]]
"""`await offload(function, *args)`: the function's result, computed in the batcher's thread."""

BatchFunction = Callable[[Sequence[Any], Offload], Awaitable[list[Any]]]
"""Computes the answers of a batch of payloads, one per payload (an exception instance fails
only that payload's request); blocking steps go through the given `Offload`."""


async def run_inline(function: Callable[..., T], *args: Any) -> T:
    """An `Offload` that runs the function where it is called (tools without a thread)."""
    return function(*args)


class Batcher:
    """Runs a batch function on the event loop, one batch at a time, merging the jobs that
    queue up meanwhile; its blocking steps run in one dedicated thread."""

    def __init__(self, compute: BatchFunction, name: str = "mfserve-scoring") -> None:
        self._compute = compute
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: list[Job[Any]] = []
        self._in_flight = 0
        self._launching = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.jobs = 0

    async def submit(self, payload: Any) -> Any:
        """The answer for one payload, computed in the next batch."""
        loop = asyncio.get_running_loop()
        job: Job[Any] = Job(payload, loop.create_future())
        self._pending.append(job)
        if not self._launching and self._in_flight < MAX_BATCHES_IN_FLIGHT:
            self._launching = True
            loop.call_soon(self._launch)  # after the other requests of this loop pass
        return await job.future

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """The function's result, computed in the batcher's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _launch(self) -> None:
        self._launching = False
        jobs = self._pending[:MAX_BATCH_JOBS]
        del self._pending[:MAX_BATCH_JOBS]
        if not jobs:
            return
        self.batches += 1
        self.jobs += len(jobs)
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(jobs))
        self._tasks.add(task)  # a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _run(self, jobs: list[Job[Any]]) -> None:
        try:
            answers: list[Any] = await self._compute([job.payload for job in jobs], self.offload)
        except Exception as error:  # every request of the batch fails alike
            answers = [error] * len(jobs)
        for job, answer in zip(jobs, answers, strict=True):
            if job.future.done():  # the request was cancelled (client gone)
                continue
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)
        self._in_flight -= 1
        if self._pending and not self._launching:
            self._launch()

    def close(self) -> None:
        """Stop the thread once the step in progress is done."""
        self._executor.shutdown(wait=True)
