"""The worker's steps in-process: claim, train, publish, gate, cancel, reap, schedule, prune."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine

from service.config import Settings, load_settings
from service.db import jobs
from service.db.jobs import TrainingJob
from service.db.session import make_sessionmaker, transaction
from service.db.versions import ModelVersion, get_active_version, list_versions
from service.ml.artifacts import file_sha256, read_artifact
from service.worker.loop import Worker, run_worker
from tests.worker.conftest import store_ratings

FAST = {"epochs": 3, "embedding_size": 4, "device": "cpu"}
HANG_GUARD_S = 120.0
"""Only stops a hung test (training that never reports an epoch); no promise is timed."""


def _settings(settings: Settings, **overrides: Any) -> Settings:
    values = {
        "retrain_interval": 0,
        "retrain_min_new_ratings": 0,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 2.0,
        "default_config": FAST,
        **overrides,
    }
    return load_settings(**{**settings.model_dump(), **values})


def _enqueue(engine: Engine, algorithm: str = "als-biased", config: Any = None) -> int:
    with transaction(make_sessionmaker(engine, write=True)) as session:
        return jobs.enqueue_job(session, algorithm, FAST if config is None else config).job_id


def _job(engine: Engine, job_id: int) -> TrainingJob:
    with transaction(make_sessionmaker(engine)) as session:
        return jobs.get_job(session, job_id)


def _active(engine: Engine) -> ModelVersion | None:
    with transaction(make_sessionmaker(engine)) as session:
        return get_active_version(session)


def test_a_job_trains_evaluates_and_publishes(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings), rated_engine, worker_id="w-test")
    job_id = _enqueue(rated_engine)
    assert worker.step()
    job = _job(rated_engine, job_id)
    assert job.status == "succeeded", job.error
    assert job.worker_id == "w-test"
    assert job.version == 1
    assert (job.progress.epoch, job.progress.epochs) == (3, 3)
    assert job.metrics is not None
    assert job.metrics["gate"]["passed"]
    assert job.metrics["validation"]["rmse"] < job.metrics["baseline"]["rmse"]
    assert job.snapshot is not None
    assert job.snapshot["n_ratings"] > 0
    active = _active(rated_engine)
    assert active is not None
    assert (active.version, active.algorithm, active.job_id) == (1, "als-biased", job_id)
    assert active.config["epochs"] == 3
    path = Path(settings.artifact_dir) / active.artifact
    assert file_sha256(path) == active.sha256
    loaded = read_artifact(path, active.sha256)
    assert loaded.model.name == "als-biased"
    assert loaded.fallback is not None
    assert loaded.snapshot is not None
    assert loaded.snapshot.n_ratings == active.n_ratings
    assert not worker.step()  # nothing queued


def test_cancel_before_training_starts(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings), rated_engine)
    job_id = _enqueue(rated_engine)
    claimed = worker.claim()
    assert claimed is not None
    with transaction(make_sessionmaker(rated_engine, write=True)) as session:
        jobs.request_cancel(session, job_id)
    worker.run_job(claimed)
    job = _job(rated_engine, job_id)
    assert job.status == "cancelled"
    assert job.progress.epoch is None
    assert _active(rated_engine) is None


def test_cancel_stops_training_at_the_next_epoch(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings), rated_engine)
    epochs = 2000
    job_id = _enqueue(rated_engine, config={**FAST, "epochs": epochs})
    claimed = worker.claim()
    assert claimed is not None
    reads = make_sessionmaker(rated_engine)

    def cancel_once_training() -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            if _job(rated_engine, job_id).progress.epoch:
                with transaction(make_sessionmaker(rated_engine, write=True)) as session:
                    jobs.request_cancel(session, job_id)
                return
            time.sleep(0.01)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    worker.run_job(claimed)
    canceller.join()
    with transaction(reads) as session:
        job = jobs.get_job(session, job_id)
    assert job.status == "cancelled"
    assert job.error == "cancelled by an admin request"
    assert job.progress.epoch is not None
    assert 1 <= job.progress.epoch < epochs
    assert _active(rated_engine) is None


def test_failed_gate_keeps_the_active_model(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings), rated_engine)
    first = _enqueue(rated_engine)
    assert worker.step()
    assert _job(rated_engine, first).status == "succeeded"  # else "keeps" would compare None
    before = _active(rated_engine)
    assert before is not None
    assert before.version == 1
    # Regularized to nothing, the model predicts the global mean: worse than the item means.
    strict = Worker(_settings(settings, gate_margin=0.0), rated_engine)
    flat = {**FAST, "regularization": 1e6, "damping": 1e6}
    job_id = _enqueue(rated_engine, config=flat)
    strict.step()
    job = _job(rated_engine, job_id)
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.startswith("sanity gate failed")
    assert job.metrics is not None
    assert not job.metrics["gate"]["passed"]
    assert _active(rated_engine) == before


def test_bad_data_fails_the_job_with_the_reason(engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings), engine)
    job_id = _enqueue(engine)
    worker.step()
    job = _job(engine, job_id)
    assert job.status == "failed"
    assert job.error is not None
    assert "needs explicit ratings" in job.error


def test_stale_job_is_reaped_and_the_next_one_runs(
    rated_engine: Engine, settings: Settings
) -> None:
    writes = make_sessionmaker(rated_engine, write=True)
    stale = _enqueue(rated_engine)
    with transaction(writes) as session:
        jobs.claim_job(session, "gone", now=jobs.utcnow() - timedelta(seconds=10))
    fresh = _enqueue(rated_engine)
    worker = Worker(_settings(settings), rated_engine)
    assert worker.step()
    reaped = _job(rated_engine, stale)
    assert reaped.status == "failed"
    assert reaped.error is not None
    assert "stopped heartbeating" in reaped.error
    assert _job(rated_engine, fresh).status == "succeeded"


def test_schedule_by_new_ratings(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings, retrain_min_new_ratings=50), rated_engine)
    job = worker.schedule_if_due()
    assert job is not None
    assert job.requested_by == "schedule"
    assert job.algorithm == "als-biased"
    assert worker.schedule_if_due() is None  # one open job at a time
    assert worker.step()
    assert _job(rated_engine, job.job_id).status == "succeeded"
    assert worker.schedule_if_due() is None  # nothing new since the snapshot
    store_ratings(rated_engine, n_users=5, n_items=40, seed=99)  # new users' ratings
    later = jobs.utcnow() + timedelta(minutes=5)  # past the minimum gap between retrains
    assert worker.schedule_if_due(now=later) is not None


def test_schedule_by_interval(rated_engine: Engine, settings: Settings) -> None:
    worker = Worker(_settings(settings, retrain_interval=600), rated_engine)
    first = worker.schedule_if_due()
    assert first is not None
    assert worker.step()
    assert _job(rated_engine, first.job_id).status == "succeeded"
    store_ratings(rated_engine, n_users=3, n_items=40, seed=98)
    assert worker.schedule_if_due() is None  # interval not over
    assert worker.schedule_if_due(now=jobs.utcnow() + timedelta(seconds=601)) is not None


def test_retention_keeps_the_newest_versions_and_the_active_one(
    rated_engine: Engine, settings: Settings
) -> None:
    worker = Worker(_settings(settings, keep_versions=1), rated_engine)
    for _ in range(3):
        _enqueue(rated_engine)
        worker.step()
    with transaction(make_sessionmaker(rated_engine)) as session:
        versions = list_versions(session)
    assert [(v.version, v.pruned_at is None) for v in versions] == [
        (3, True),
        (2, False),
        (1, False),
    ]
    files = {p.name for p in Path(settings.artifact_dir).iterdir()}
    assert files == {versions[0].artifact}


def test_run_worker_once_runs_one_job(rated_engine: Engine, settings: Settings) -> None:
    quick = _settings(settings, worker_threads=torch.get_num_threads())
    first, second = _enqueue(rated_engine), _enqueue(rated_engine)
    assert run_worker(quick, once=True) == 0
    assert _job(rated_engine, first).status == "succeeded"
    assert _job(rated_engine, second).status == "queued"


def test_run_worker_refuses_a_bad_default_config(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _settings(settings, default_config={"epochs": -1})
    assert run_worker(bad, once=True) == 2
    assert "MFSERVE_DEFAULT_CONFIG" in caplog.text


def test_run_worker_refuses_an_unmigrated_database(
    empty_database_url: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert run_worker(_settings(settings, database_url=empty_database_url), once=True) == 2
    assert "mfserve migrate" in caplog.text
