"""`ModelRegistry.wake()`: a poll now, from any thread, instead of at the next interval."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.ml.artifacts import ArtifactInfo, write_artifact
from service.ml.catalog import create_model
from service.registry import ModelRegistry
from service.worker.pipeline import build_interactions
from tests.support.synthetic import low_rank_ratings

HANG_GUARD_S = 60.0
"""Only stops a hung test (a wake-up that never comes); no promise is timed."""


@dataclass(frozen=True)
class Record:
    version: int
    algorithm: str
    artifact: str
    sha256: str


class CountingSource:
    """The active-version pointer, counting how often the registry reads it."""

    def __init__(self) -> None:
        self.record: Record | None = None
        self.reads = 0

    def __call__(self) -> Record | None:
        self.reads += 1
        return self.record


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ArtifactInfo]]:
    directory = tmp_path_factory.mktemp("artifacts")
    infos = []
    for seed in (1, 2):
        model = create_model("als-biased", {"epochs": 1, "embedding_size": 2, "seed": seed})
        model.fit(build_interactions(low_rank_ratings(seed=seed), explicit=True))
        infos.append(write_artifact(model, directory))
    return directory, infos


async def _until(condition: object, what: str) -> None:
    async def wait() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(wait(), HANG_GUARD_S)
    except TimeoutError:
        pytest.fail(f"hung waiting for {what}")


def test_wake_from_another_thread_polls_at_once(
    artifacts: tuple[Path, list[ArtifactInfo]],
) -> None:
    directory, (first, second) = artifacts
    source = CountingSource()
    registry = ModelRegistry(source, directory, poll_interval_s=3600)
    registry.wake()  # before the loop runs: nothing to wake, no error

    async def scenario() -> None:
        source.record = Record(1, "als-biased", first.path.name, first.sha256)
        registry.start()
        await _until(lambda: registry.version == 1, "the first poll")
        reads = source.reads
        source.record = Record(2, "als-biased", second.path.name, second.sha256)
        for _ in range(20):  # an hour's poll interval: no read happens by itself
            await asyncio.sleep(0)
        assert (source.reads, registry.version) == (reads, 1)
        waker = threading.Thread(target=registry.wake)
        waker.start()
        waker.join()
        await _until(lambda: registry.version == 2, "the woken poll")
        assert source.reads == reads + 1
        await registry.stop()
        registry.wake()  # after the loop ended: no error

    asyncio.run(scenario())
