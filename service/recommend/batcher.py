"""Micro-batching of the scoring work of concurrent requests.

Every ranking call of the serving routes becomes a job. Batches are prepared on the event loop:
the first job of a loop pass launches one at the end of the pass (so the requests that arrived
together go together); at most `MAX_BATCHES_IN_FLIGHT` are under way, and jobs arriving
meanwhile wait for a free slot. One batch costs one database read and one matrix product and
`topk` per item table, instead of one per request.

A batch function prepares a `BatchPlan`: its heavy, GIL-free `work` (the matrix products and
`topk`s: torch releases the GIL while they compute) runs in one dedicated thread (handed over
through a `SimpleQueue`: a thread pool's futures and locks cost more per batch), and its
`finish` turns the result into the requests' answers back on the loop. Nothing else goes to
the thread: every call into a thread must take the GIL back when it returns, and a thread waiting
for the GIL while the loop is busy waits up to the interpreter's switch interval, so Python
work moved to a thread costs more than it saves. The loop keeps parsing HTTP on one core while
the product runs on the other. While it serves, the process shortens that interval
(`GIL_SWITCH_INTERVAL_S`): each of a batch's torch calls takes the GIL back once, and at
Python's default of 5 ms a batch under load spent most of its time waiting for the busy loop.

The thread hands its result back with one `call_soon_threadsafe` that runs `finish` and
answers the requests directly: awaiting the thread from a coroutine would take two more loop
passes (one to complete an asyncio future, one to resume the coroutine waiting on it), each as
long as the work of every request that is ready in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_BATCH_JOBS = 256
"""Jobs run together at most (more wait for the next batch)."""

GIL_SWITCH_INTERVAL_S = 0.0005
"""The interpreter's switch interval while serving (Python's default: 0.005): the longest the
scoring thread waits for the GIL after each torch call while the event loop runs Python. The
loop is asked to let go only while another thread waits, so a shorter interval costs nothing
when the thread is idle."""

MAX_BATCHES_IN_FLIGHT = 2
"""Batches under way at once: while one waits for the thread, the next one reads and prepares,
so the loop does not idle waiting for a batch to come back."""


@dataclass
class Job(Generic[T]):
    """One request's share of a batch: what to compute, and where its answer goes."""

    payload: Any
    future: asyncio.Future[T]


@dataclass(frozen=True)
class BatchPlan:
    """What is left of a prepared batch: `work`, run in the batcher's thread (None: nothing to
    run there), and `finish`, which turns its result into one answer per payload on the event
    loop (an exception instance fails only that payload's request)."""

    work: Callable[[], Any] | None
    finish: Callable[[Any], list[Any]]


BatchFunction = Callable[[Sequence[Any]], Awaitable[BatchPlan]]
"""Prepares the plan of a batch of payloads (reads and all other work on the event loop)."""


def run_inline(plan: BatchPlan) -> list[Any]:
    """A plan's answers, its work run where this is called (tools without a thread)."""
    return plan.finish(None if plan.work is None else plan.work())


@dataclass(frozen=True)
class _Failed:
    """The work of a batch raised: every request of the batch fails alike."""

    error: Exception


class Batcher:
    """Prepares batches of the jobs that queue up on the event loop and runs their plans' work
    in one dedicated thread."""

    def __init__(self, compute: BatchFunction, name: str = "mfserve-scoring") -> None:
        self._compute = compute
        self._name = f"{name}_0"
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
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
            plan = await self._compute([job.payload for job in jobs])
        except Exception as error:  # every request of the batch fails alike
            self._answer(jobs, [error] * len(jobs))
            return
        if plan.work is None:
            self._complete(jobs, plan, None)
            return
        loop = asyncio.get_running_loop()
        work = plan.work

        def in_thread() -> None:
            try:
                result: Any = work()
            except Exception as error:
                result = _Failed(error)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(self._complete, jobs, plan, result)

        if self._closed:
            self._answer(jobs, [RuntimeError("the batcher was closed")] * len(jobs))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._work.put(in_thread)

    def _serve(self) -> None:
        """The scoring thread: run handed-over work until `close` hands over None."""
        while (step := self._work.get()) is not None:
            step()

    def _complete(self, jobs: list[Job[Any]], plan: BatchPlan, result: Any) -> None:
        """Finish a batch on the loop, right where its thread's result arrives."""
        if isinstance(result, _Failed):
            answers: list[Any] = [result.error] * len(jobs)
        else:
            try:
                answers = plan.finish(result)
            except Exception as error:  # every request of the batch fails alike
                answers = [error] * len(jobs)
        self._answer(jobs, answers)

    def _answer(self, jobs: list[Job[Any]], answers: list[Any]) -> None:
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
        """Stop the thread once the steps handed to it are done."""
        self._closed = True
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
