"""The serving batcher: jobs of one loop pass run together, failures stay with their jobs,
blocking steps run in its thread, and at most two batches are under way at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from service.recommend.batcher import MAX_BATCHES_IN_FLIGHT, Batcher, BatchPlan, run_inline


class Recorder:
    """A batch function that records its batches and where their steps ran, and answers each
    payload doubled."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.threads: list[str] = []
        self.finished_on: list[str] = []
        self.running = 0
        self.most_running = 0
        self.hold = hold

    async def __call__(self, payloads: Sequence[Any]) -> BatchPlan:
        self.batches.append(list(payloads))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        if self.hold is not None:
            await self.hold.wait()
        if "prepare-crash" in payloads:
            self.running -= 1
            raise RuntimeError("the preparation failed")

        def work() -> str:
            if "work-crash" in payloads:
                raise RuntimeError("the thread's work failed")
            return threading.current_thread().name

        def finish(thread: str) -> list[Any]:
            self.running -= 1
            self.threads.append(thread)
            self.finished_on.append(threading.current_thread().name)
            answers: list[Any] = []
            for payload in payloads:
                if payload == "boom":
                    answers.append(ValueError("bad payload"))
                elif payload == "crash":
                    raise RuntimeError("the whole batch failed")
                else:
                    answers.append(payload * 2)
            return answers

        return BatchPlan(work, finish)


@contextlib.contextmanager
def running(compute: Recorder) -> Iterator[Batcher]:
    """A batcher over `compute`, closed (its thread stopped) when the block ends."""
    batcher = Batcher(compute)
    try:
        yield batcher
    finally:
        batcher.close()


def test_jobs_of_one_loop_pass_run_as_one_batch_in_order() -> None:
    async def scenario() -> tuple[list[Any], Recorder]:
        compute = Recorder()
        with running(compute) as batcher:
            answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        return answers, compute

    answers, compute = asyncio.run(scenario())
    assert answers == [0, 2, 4, 6, 8]
    assert compute.batches == [[0, 1, 2, 3, 4]]
    assert compute.threads == ["mfserve-scoring_0"]
    assert compute.finished_on == [threading.current_thread().name]  # the loop's thread


def test_an_exception_answer_fails_only_its_job_and_a_failed_batch_only_its_jobs() -> None:
    async def scenario() -> None:
        with running(Recorder()) as batcher:
            first = await asyncio.gather(
                batcher.submit(1),
                batcher.submit("boom"),
                batcher.submit(3),
                return_exceptions=True,
            )
            assert first[0] == 2
            assert first[2] == 6
            assert isinstance(first[1], ValueError)
            for failing, message in [
                ("crash", "whole batch"),
                ("work-crash", "thread's work"),
                ("prepare-crash", "preparation"),
            ]:
                failed = await asyncio.gather(
                    batcher.submit(failing), batcher.submit(7), return_exceptions=True
                )
                for answer in failed:
                    assert isinstance(answer, RuntimeError)
                    assert message in str(answer)
                assert await batcher.submit(4) == 8  # the batcher goes on after a failed batch

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_the_others_of_its_batch_answered() -> None:
    async def scenario() -> None:
        hold = asyncio.Event()
        with running(Recorder(hold)) as batcher:
            gone = asyncio.ensure_future(batcher.submit(1))
            kept = asyncio.ensure_future(batcher.submit(2))
            await asyncio.sleep(0.01)  # both are in the held batch
            gone.cancel()
            hold.set()
            assert await kept == 4
            assert gone.cancelled()
            assert await batcher.submit(5) == 10

    asyncio.run(scenario())


def test_jobs_arriving_while_batches_run_wait_for_a_free_slot() -> None:
    async def scenario() -> Recorder:
        hold = asyncio.Event()
        compute = Recorder(hold)
        with running(compute) as batcher:
            waves = []
            for wave in range(4):  # one loop pass each
                waves.append(asyncio.ensure_future(batcher.submit(wave)))
                await asyncio.sleep(0.01)
            assert len(compute.batches) == MAX_BATCHES_IN_FLIGHT
            hold.set()
            assert await asyncio.gather(*waves) == [0, 2, 4, 6]
        return compute

    compute = asyncio.run(scenario())
    assert compute.most_running == MAX_BATCHES_IN_FLIGHT
    assert compute.batches == [[0], [1], [2, 3]]


def test_a_plan_runs_inline_without_a_batcher() -> None:
    async def scenario() -> list[Any]:
        return run_inline(await Recorder()([1, "boom", 3]))

    answers = asyncio.run(scenario())
    assert answers[0] == 2
    assert isinstance(answers[1], ValueError)
    assert answers[2] == 6
