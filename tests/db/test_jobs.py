"""Training jobs and model versions in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs, schedule, versions
from service.db.session import make_sessionmaker, transaction
from service.db.snapshot import read_ratings_snapshot
from service.db.upsert import RatingBatch, upsert_ratings
from service.db.versions import ModelVersion

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def writes(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine, write=True)


def _enqueue(writes: sessionmaker[Session], n: int = 1, algorithm: str = "als-biased") -> list[int]:
    with transaction(writes) as session:
        return [
            jobs.enqueue_job(
                session, algorithm, {"epochs": i + 1}, now=T0 + timedelta(seconds=i)
            ).job_id
            for i in range(n)
        ]


def _new_version(artifact: str = "a.mfmodel") -> ModelVersion:
    return ModelVersion(
        algorithm="als-biased",
        config={"epochs": 1},
        artifact=artifact,
        sha256="a" * 64,
        size_bytes=10,
        n_ratings=5,
        n_users=2,
        n_items=3,
        newest_rating_at=T0,
        snapshot_taken_at=T0,
        stored_until=T0,
        metrics={"validation": {"rmse": 0.9}},
    )


def _publish(writes: sessionmaker[Session], worker: str = "w1", activate: bool = True) -> int:
    (job_id,) = _enqueue(writes)
    with transaction(writes) as session:
        claimed = jobs.claim_job(session, worker)
        assert claimed is not None
        assert claimed.job_id == job_id
        version = versions.publish_version(
            session, job_id, worker, _new_version(f"v{job_id}.mfmodel"), activate=activate
        )
    assert version is not None
    return version.version


def test_enqueue_claim_in_order_and_once(writes: sessionmaker[Session]) -> None:
    first, second = _enqueue(writes, 2)
    with transaction(writes) as session:
        job = jobs.get_job(session, first)
        assert job.status == "queued"
        assert job.config == {"epochs": 1}
        assert job.requested_at == T0
        claimed = jobs.claim_job(session, "w1", now=T0)
        assert claimed is not None
        assert (claimed.job_id, claimed.status, claimed.worker_id) == (first, "running", "w1")
        assert claimed.heartbeat_at == T0
    with transaction(writes) as session:
        again = jobs.claim_job(session, "w2")
        assert again is not None
        assert again.job_id == second
        assert jobs.claim_job(session, "w3") is None
        listed = jobs.list_jobs(session)
    assert [j.job_id for j in listed] == [second, first]


def test_concurrent_claims_run_each_job_once(writes: sessionmaker[Session]) -> None:
    ids = _enqueue(writes, 12)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(worker: str) -> None:
        mine = claimed.setdefault(worker, [])
        try:
            while True:
                with transaction(writes) as session:
                    job = jobs.claim_job(session, worker)
                if job is None:
                    return
                mine.append(job.job_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    everything = sorted(job for mine in claimed.values() for job in mine)
    assert everything == sorted(ids)


def test_heartbeat_progress_and_cancel_of_a_running_job(writes: sessionmaker[Session]) -> None:
    (job_id,) = _enqueue(writes)
    with transaction(writes) as session:
        jobs.claim_job(session, "w1")
        state = jobs.record_progress(
            session, job_id, "w1", epoch=2, epochs=8, loss=0.5, elapsed_s=4.0
        )
        assert state.owned
        assert not state.cancel_requested
        assert not jobs.heartbeat(session, job_id, "intruder").owned
    with transaction(writes) as session:
        progress = jobs.get_job(session, job_id).progress
        assert progress.as_dict() == {
            "epoch": 2,
            "epochs": 8,
            "loss": 0.5,
            "elapsed_s": 4.0,
            "eta_s": 12.0,
            "phase": "training",
        }
        cancelled = jobs.request_cancel(session, job_id)
        assert cancelled.status == "running"
        assert cancelled.cancel_requested
        assert jobs.heartbeat(session, job_id, "w1").cancel_requested
        assert jobs.finish_job(session, job_id, "w1", "cancelled", error="cancelled")
    with transaction(writes) as session:
        assert jobs.get_job(session, job_id).status == "cancelled"
        with pytest.raises(jobs.JobStateError, match="already ended"):
            jobs.request_cancel(session, job_id)
        with pytest.raises(jobs.JobNotFoundError):
            jobs.request_cancel(session, 999)


def test_cancel_of_a_queued_job_is_immediate(writes: sessionmaker[Session]) -> None:
    (job_id,) = _enqueue(writes)
    with transaction(writes) as session:
        assert jobs.request_cancel(session, job_id).status == "cancelled"
        assert jobs.claim_job(session, "w1") is None


def test_reaper_fails_jobs_without_heartbeat(writes: sessionmaker[Session]) -> None:
    stale, fresh = _enqueue(writes, 2)
    with transaction(writes) as session:
        jobs.claim_job(session, "dead", now=T0)
        jobs.claim_job(session, "alive", now=T0 + timedelta(seconds=50))
    with transaction(writes) as session:
        reaped = jobs.reap_stale_jobs(session, 30, now=T0 + timedelta(seconds=60))
    assert reaped == [stale]
    with transaction(writes) as session:
        job = jobs.get_job(session, stale)
        assert job.status == "failed"
        assert job.error is not None
        assert "stopped heartbeating" in job.error
        assert jobs.get_job(session, fresh).status == "running"
        # the reaped worker can no longer report or publish
        assert not jobs.heartbeat(session, stale, "dead").owned
        assert (
            versions.publish_version(session, stale, "dead", _new_version(), activate=True) is None
        )
        assert versions.list_versions(session) == []


def test_publish_activate_rollback_and_prune(writes: sessionmaker[Session]) -> None:
    assert [_publish(writes) for _ in range(3)] == [1, 2, 3]
    with transaction(writes) as session:
        active = versions.get_active_version(session)
        assert active is not None
        assert active.version == 3
        assert active.active
        job = jobs.get_job(session, active.job_id or 0)
        assert (job.status, job.version) == ("succeeded", 3)
        rolled = versions.activate_version(session, 1)
        assert rolled.active
    with transaction(writes) as session:
        assert versions.active_version_number(session) == 1
        assert [v.version for v in versions.list_versions(session)] == [3, 2, 1]
        assert [v.active for v in versions.list_versions(session)] == [False, False, True]
        candidates = versions.prune_candidates(session, keep=1)
        assert [v.version for v in candidates] == [2]  # version 1 is active: kept
        assert versions.mark_pruned(session, [2]) == [2]
    with transaction(writes) as session:
        assert versions.referenced_artifacts(session) == {"v1.mfmodel", "v3.mfmodel"}
        with pytest.raises(versions.VersionUnavailableError, match="retention"):
            versions.activate_version(session, 2)
    with transaction(writes) as session, pytest.raises(versions.VersionNotFoundError):
        versions.activate_version(session, 99)


def test_unactivated_publish_keeps_the_active_version(writes: sessionmaker[Session]) -> None:
    _publish(writes)
    _publish(writes, activate=False)
    with transaction(writes) as session:
        assert versions.active_version_number(session) == 1


def test_schedule_queries(writes: sessionmaker[Session]) -> None:
    with transaction(writes) as session:
        upsert_ratings(
            session, RatingBatch(["u1", "u2"], ["i1", "i1"], [4.0, None], [T0, T0]), now=T0
        )
        assert not schedule.has_open_job(session)
        assert schedule.newest_snapshot_watermark(session) is None
        assert schedule.count_ratings_stored_after(session, None) == 2
    (job_id,) = _enqueue(writes)
    with transaction(writes) as session:
        assert schedule.has_open_job(session)
        jobs.claim_job(session, "w")
        jobs.record_snapshot(session, job_id, "w", {"n_ratings": 2}, T0)
        later = T0 + timedelta(minutes=1)
        batch = RatingBatch(["u3"], ["i2"], [3.0], [later])
        upsert_ratings(session, batch, now=later)
        assert schedule.newest_snapshot_watermark(session) == T0
        assert schedule.count_ratings_stored_after(session, T0) == 1


def test_snapshot_streams_every_rating(engine: Engine, writes: sessionmaker[Session]) -> None:
    rng = np.random.default_rng(5)
    users = [f"user-{u}" for u in rng.integers(0, 40, 500)]
    items = [f"item-{i}" for i in rng.integers(0, 30, 500)]
    values: list[float | None] = [None if k % 7 == 0 else float(1 + k % 5) for k in range(500)]
    times = [T0 + timedelta(seconds=k) for k in range(500)]
    with transaction(writes) as session:
        upsert_ratings(session, RatingBatch(users, items, values, times), now=T0)
    snapshot = read_ratings_snapshot(engine, chunk_rows=64)
    expected = {}
    for user, item, value, time in zip(users, items, values, times, strict=True):
        expected[(user, item)] = (value, time)  # later rows win, as in the upsert
    got = {
        (snapshot.user_ids[u], snapshot.item_ids[i]): None if np.isnan(v) else float(v)
        for u, i, v in zip(snapshot.users, snapshot.items, snapshot.values, strict=True)
    }
    assert got == {key: value for key, (value, _time) in expected.items()}
    assert snapshot.newest_rating_at == max(time for _value, time in expected.values())
    assert snapshot.stored_until == T0
    assert set(snapshot.history_versions) == set(users)
