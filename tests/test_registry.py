"""The model registry: load off the request path, verify, swap one reference, refuse bad files."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.ml.artifacts import ArtifactInfo, LoadedArtifact, read_artifact, write_artifact
from service.ml.base import Recommender
from service.ml.catalog import create_model
from service.registry import ModelRegistry
from service.worker.pipeline import build_interactions
from tests.support.synthetic import low_rank_ratings

HANG_GUARD_S = 60.0
"""Only stops a hung test (a poll that never comes); no promise is timed."""


@dataclass(frozen=True)
class Record:
    version: int
    algorithm: str
    artifact: str
    sha256: str


class Source:
    """A stand-in for the database's active-version pointer."""

    def __init__(self) -> None:
        self.record: Record | None = None
        self.fail = False

    def __call__(self) -> Record | None:
        if self.fail:
            raise ConnectionError("database away")
        return self.record


class CountingReader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path, sha256: str) -> LoadedArtifact:
        self.calls += 1
        return read_artifact(path, sha256)


def _model(epochs: int, seed: int) -> Recommender[Any]:
    interactions = build_interactions(low_rank_ratings(seed=seed), explicit=True)
    model = create_model(
        "als-biased", {"epochs": epochs, "embedding_size": 3, "seed": seed, "device": "cpu"}
    )
    model.fit(interactions)
    return model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ArtifactInfo]]:
    directory = tmp_path_factory.mktemp("artifacts")
    return directory, [write_artifact(_model(2, seed), directory) for seed in (1, 2)]


def _record(version: int, info: ArtifactInfo, sha256: str | None = None) -> Record:
    return Record(version, "als-biased", info.path.name, sha256 or info.sha256)


def test_loads_active_version_and_swaps_on_change(
    artifacts: tuple[Path, list[ArtifactInfo]],
) -> None:
    directory, (first, second) = artifacts
    source, reader = Source(), CountingReader()
    registry = ModelRegistry(source, directory, reader=reader)

    async def scenario() -> None:
        assert not await registry.refresh()
        assert registry.current is None
        source.record = _record(1, first)
        assert await registry.refresh()
        served = registry.current
        assert served is not None
        assert served.version == 1
        assert served.sha256 == first.sha256
        assert not await registry.refresh()  # same version: nothing loaded again
        assert reader.calls == 1
        source.record = _record(2, second)
        assert await registry.refresh()
        assert registry.version == 2
        # a request that read the reference before the swap still holds version 1, intact
        assert served.version == 1
        assert served.model is not registry.current.model  # type: ignore[union-attr]
        source.record = _record(1, first)  # rollback
        assert await registry.refresh()
        assert registry.version == 1

    asyncio.run(scenario())


def test_tampered_artifact_is_refused_and_old_model_keeps_serving(
    artifacts: tuple[Path, list[ArtifactInfo]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory, (first, second) = artifacts
    source, reader = Source(), CountingReader()
    registry = ModelRegistry(source, directory, retry_delay_s=3600, reader=reader)

    async def scenario() -> None:
        source.record = _record(1, first)
        await registry.refresh()
        source.record = _record(2, second, sha256="f" * 64)  # recorded hash differs from file
        with caplog.at_level(logging.ERROR, logger="service.registry"):
            assert not await registry.refresh()
        assert registry.version == 1
        assert registry.is_refused(2, "f" * 64)
        assert registry.last_error is not None
        assert "refused model version 2" in registry.last_error
        assert any("refused model version 2" in r.getMessage() for r in caplog.records)
        calls = reader.calls
        for _ in range(5):  # no hot loop: not tried again before the retry delay
            assert not await registry.refresh()
        assert reader.calls == calls
        assert registry.version == 1

    asyncio.run(scenario())


def test_refused_version_is_retried_after_the_delay(
    tmp_path: Path, artifacts: tuple[Path, list[ArtifactInfo]]
) -> None:
    _, (first, _second) = artifacts
    source, reader = Source(), CountingReader()
    registry = ModelRegistry(source, tmp_path, retry_delay_s=0.05, reader=reader)

    async def scenario() -> None:
        source.record = _record(1, first)
        assert not await registry.refresh()  # the file is not in tmp_path yet
        assert registry.current is None
        (tmp_path / first.path.name).write_bytes(first.path.read_bytes())
        await asyncio.sleep(0.06)
        assert await registry.refresh()
        assert registry.version == 1
        assert not registry.is_refused(1, first.sha256)
        assert registry.last_error is None

    asyncio.run(scenario())


def test_wrong_algorithm_record_is_refused(artifacts: tuple[Path, list[ArtifactInfo]]) -> None:
    directory, (first, _second) = artifacts
    source = Source()
    registry = ModelRegistry(source, directory)
    source.record = Record(1, "flexmf-explicit", first.path.name, first.sha256)
    assert not asyncio.run(registry.refresh())
    assert registry.current is None
    assert registry.last_error is not None
    assert "recorded as 'flexmf-explicit'" in registry.last_error


def test_database_errors_keep_the_served_model(
    artifacts: tuple[Path, list[ArtifactInfo]],
) -> None:
    directory, (first, _second) = artifacts
    source = Source()
    registry = ModelRegistry(source, directory)

    async def scenario() -> None:
        source.record = _record(1, first)
        await registry.refresh()
        source.fail = True
        assert not await registry.refresh()
        assert registry.version == 1
        assert registry.last_error is not None
        assert "database away" in registry.last_error

    asyncio.run(scenario())


def test_poll_loop_picks_up_a_new_version(artifacts: tuple[Path, list[ArtifactInfo]]) -> None:
    directory, (first, second) = artifacts
    source = Source()
    registry = ModelRegistry(source, directory, poll_interval_s=0.01)

    async def until_version(version: int) -> None:
        while registry.version != version:
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        source.record = _record(1, first)
        registry.start()
        await asyncio.wait_for(until_version(1), HANG_GUARD_S)
        source.record = _record(2, second)
        await asyncio.wait_for(until_version(2), HANG_GUARD_S)
        await registry.stop()

    asyncio.run(scenario())
    assert registry.version == 2


def test_snapshot_state_keeps_only_trained_users_unchanged_since_the_snapshot() -> None:
    from datetime import UTC, datetime

    import numpy as np

    from service.db.serving_reads import Histories
    from service.ml.artifacts import SnapshotInfo
    from service.ml.data import Vocabulary
    from service.registry import UserStates

    histories = Histories(
        users=["a", "b", "c", "d"],
        markers=np.array([1, 2, 3, 4]),
        offsets=np.array([0, 2, 3, 6, 7]),
        item_ids=np.array([10, 11, 20, 30, 31, 32, 40], dtype=np.int32),
        ratings=np.arange(7, dtype=np.float32),
    )
    snapshot = SnapshotInfo(
        taken_at=datetime.now(UTC),
        n_ratings=7,
        n_users=4,
        n_items=7,
        history_versions={"a": 1, "b": 5, "c": 3},  # b changed since; d is new
    )
    states = UserStates.build(histories, Vocabulary(["c", "x", "a", "b"]), snapshot)
    c = states.profile(0, 3)
    assert c is not None
    assert c.item_ids.tolist() == [30, 31, 32]
    assert c.ratings.tolist() == [3.0, 4.0, 5.0]
    a = states.profile(2, 1)
    assert a is not None
    assert a.item_ids.tolist() == [10, 11]
    assert states.profile(2, 2) is None  # a's marker moved on: read again
    assert states.profile(3, 2) is None  # b changed after the snapshot
    assert states.profile(1, 0) is None  # x has no ratings
