"""Artifact retention: a rolled-back active version keeps its file; stray files are removed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings, load_settings
from service.db import jobs, versions
from service.db.session import make_sessionmaker, transaction
from service.ml.artifacts import read_artifact
from service.worker.loop import Worker

FAST = {"epochs": 2, "embedding_size": 4, "device": "cpu"}
HOURS_AGO = 2 * 3600.0
"""Age given to stray files: past the hour of grace a file being written is allowed."""


def _settings(settings: Settings, **overrides: Any) -> Settings:
    values = {"retrain_interval": 0, "retrain_min_new_ratings": 0, **overrides}
    return load_settings(**{**settings.model_dump(), **values})


def _publish(engine: Engine, worker: Worker) -> int:
    with transaction(make_sessionmaker(engine, write=True)) as session:
        job_id = jobs.enqueue_job(session, "als-biased", FAST).job_id
    assert worker.step()
    with transaction(make_sessionmaker(engine)) as session:
        job = jobs.get_job(session, job_id)
    assert job.status == "succeeded", job.error
    assert job.version is not None
    return job.version


def _versions(engine: Engine) -> dict[int, versions.ModelVersion]:
    with transaction(make_sessionmaker(engine)) as session:
        return {v.version: v for v in versions.list_versions(session)}


def _files(settings: Settings) -> set[str]:
    return {path.name for path in Path(settings.artifact_dir).iterdir()}


def test_a_rolled_back_active_version_keeps_its_artifact(
    rated_engine: Engine, settings: Settings
) -> None:
    keep_all = Worker(_settings(settings, keep_versions=10), rated_engine)
    assert [_publish(rated_engine, keep_all) for _ in range(3)] == [1, 2, 3]
    with transaction(make_sessionmaker(rated_engine, write=True)) as session:
        versions.activate_version(session, 1)  # roll back to the oldest
    keep_one = Worker(_settings(settings, keep_versions=1), rated_engine)

    assert keep_one.prune_artifacts() == [2]
    found = _versions(rated_engine)
    assert found[1].active
    assert [v for v, record in sorted(found.items()) if record.pruned_at is None] == [1, 3]
    assert _files(settings) == {found[1].artifact, found[3].artifact}
    served = read_artifact(Path(settings.artifact_dir) / found[1].artifact, found[1].sha256)
    assert served.model.name == "als-biased"
    with (
        transaction(make_sessionmaker(rated_engine, write=True)) as session,
        pytest.raises(versions.VersionUnavailableError),
    ):
        versions.activate_version(session, 2)

    # once a newer version is active, the rolled-back one is beyond the newest K and goes too
    assert _publish(rated_engine, keep_one) == 4
    found = _versions(rated_engine)
    assert found[4].active
    assert _files(settings) == {found[4].artifact}
    assert all(found[v].pruned_at is not None for v in (1, 2, 3))


def test_unreferenced_files_are_removed_after_an_hour(
    rated_engine: Engine, settings: Settings
) -> None:
    worker = Worker(_settings(settings, keep_versions=5), rated_engine)
    _publish(rated_engine, worker)
    directory = Path(settings.artifact_dir)
    old = time.time() - HOURS_AGO
    strays = {
        "job9-als-biased-lost.mfmodel": old,  # an artifact no version refers to
        ".tmp-crashed-writer": old,  # left by a writer that died
        "job10-als-biased-fresh.mfmodel": None,  # maybe still being published
        ".tmp-being-written": None,
        "notes.txt": old,  # not ours
    }
    for name, mtime in strays.items():
        path = directory / name
        path.write_bytes(b"x")
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    (directory / "old-dir.mfmodel").mkdir()
    os.utime(directory / "old-dir.mfmodel", (old, old))
    active = _versions(rated_engine)[1]
    os.utime(directory / active.artifact, (old, old))  # referenced: kept however old

    assert worker.prune_artifacts() == []
    assert _files(settings) == {
        active.artifact,
        "job10-als-biased-fresh.mfmodel",
        ".tmp-being-written",
        "notes.txt",
        "old-dir.mfmodel",
    }
