"""The training worker process: claim a job, snapshot the ratings, train, evaluate, publish.

`run_worker` loops until SIGTERM/SIGINT: it fails running jobs whose worker stopped
heartbeating, queues a scheduled retrain when one is due, claims the oldest queued job and runs
it in this process. While a job trains, a thread heartbeats every `MFSERVE_HEARTBEAT_INTERVAL`
and picks up cancel requests; the training progress callback stores each epoch and raises to
abort training on cancel, on shutdown, or when the job was taken away (reaped). After a publish,
artifacts beyond the newest `MFSERVE_KEEP_VERSIONS` versions are deleted (never the active one).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine

from service.config import Settings
from service.db import curves, jobs, schedule, versions
from service.db.jobs import JobPhase, JobRequester, JobStatus, TrainingJob
from service.db.migrations import SchemaNotCurrentError, check_schema
from service.db.session import create_db_engine, make_sessionmaker, transaction
from service.db.snapshot import read_ratings_snapshot
from service.db.versions import ModelVersion
from service.domain.training import default_model_problem
from service.ml.base import TrainingProgress
from service.ml.catalog import create_model
from service.ml.device import configure_threads
from service.ml.features import FeatureData
from service.worker._job_facts import JobInterruptedError as JobInterruptedError
from service.worker._job_facts import JobLostError as JobLostError
from service.worker._job_facts import make_worker_id as make_worker_id
from service.worker._job_facts import snapshot_info as snapshot_info
from service.worker.heartbeat import Heartbeat
from service.worker.pipeline import (
    InsufficientDataError,
    RatingsData,
    refit,
    train_and_evaluate,
    write_model_artifact,
)
from service.worker.retention import prune_artifacts

log = logging.getLogger(__name__)

SCHEDULE_CHECK_S = 5.0
"""Seconds between checks whether a scheduled retrain is due."""

SCHEDULE_MIN_GAP_S = 30.0
"""A new-ratings retrain waits at least this long after the previous job was requested."""

MAX_BACKOFF_S = 60.0
"""Longest wait after consecutive failed loop steps (database unreachable)."""


@dataclass
class _Schedule:
    next_check: float = 0.0


class Worker:
    """One worker: the loop's steps, usable one at a time from tests."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        worker_id: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.write_sessions = make_sessionmaker(engine, write=True)
        self.worker_id = worker_id or make_worker_id()
        self.stop = stop or threading.Event()
        self.artifact_dir = Path(settings.artifact_dir)
        self._schedule = _Schedule()

    # ----- the loop ---------------------------------------------------------------------------
    def run(self, once: bool = False) -> None:
        """Work until `stop` is set (or, with `once`, until one job ran or none was queued)."""
        log.info("training worker %s started", self.worker_id)
        self._prune_quietly()
        failures = 0
        while not self.stop.is_set():
            try:
                ran = self.step()
                failures = 0
            except Exception:  # e.g. the database restarting: back off and try again
                failures += 1
                delay = min(self.settings.worker_poll_interval * 2**failures, MAX_BACKOFF_S)
                log.exception("worker step failed; retrying in %.1f s", delay)
                if once:
                    raise
                self.stop.wait(delay)
                continue
            if once:
                return
            if not ran:
                self.stop.wait(self.settings.worker_poll_interval)
        log.info("training worker %s stopped", self.worker_id)

    def step(self) -> bool:
        """Reap stale jobs, queue a due scheduled retrain, and run one queued job if any."""
        self.reap()
        if time.monotonic() >= self._schedule.next_check:
            self._schedule.next_check = time.monotonic() + SCHEDULE_CHECK_S
            self.schedule_if_due()
        job = self.claim()
        if job is None:
            return False
        self.run_job(job)
        return True

    def reap(self) -> list[int]:
        """Fail running jobs whose heartbeat is older than the timeout."""
        with transaction(self.write_sessions) as session:
            reaped = jobs.reap_stale_jobs(session, self.settings.heartbeat_timeout)
        for job_id in reaped:
            log.warning("job %d failed: its worker stopped heartbeating", job_id)
        return reaped

    def claim(self) -> TrainingJob | None:
        """Claim the oldest queued job for this worker."""
        with transaction(self.write_sessions) as session:
            return jobs.claim_job(session, self.worker_id)

    def schedule_if_due(self, now: datetime | None = None) -> TrainingJob | None:
        """Queue a retrain of the default algorithm when the interval passed or enough new
        ratings arrived since the newest job's snapshot; never beside an open job."""
        interval = self.settings.retrain_interval
        min_new = self.settings.retrain_min_new_ratings
        if not interval and not min_new:
            return None
        now = now or jobs.utcnow()
        with transaction(self.write_sessions) as session:
            versions.lock_pointer(session)  # one scheduler at a time across workers
            if schedule.has_open_job(session):
                return None
            new = schedule.count_ratings_stored_after(
                session, schedule.newest_snapshot_watermark(session)
            )
            if new == 0:
                return None
            last = schedule.latest_job(session)
            since = None if last is None else now - last.requested_at
            due_by_count = bool(min_new) and new >= min_new
            if since is not None and since < timedelta(seconds=SCHEDULE_MIN_GAP_S):
                due_by_count = False
            due_by_time = bool(interval) and (since is None or since >= timedelta(seconds=interval))
            if not (due_by_count or due_by_time):
                return None
            job = jobs.enqueue_job(
                session,
                self.settings.default_algorithm,
                dict(self.settings.default_config),
                requested_by=JobRequester.SCHEDULE,
                now=now,
            )
        reason = f"{new} new ratings" if due_by_count else f"interval {interval:g} s passed"
        log.info("scheduled retrain: job %d (%s), %s", job.job_id, job.algorithm, reason)
        return job

    # ----- one job ----------------------------------------------------------------------------
    def _finish(self, job_id: int, status: JobStatus, **values: Any) -> None:
        with transaction(self.write_sessions) as session:
            finished = jobs.finish_job(session, job_id, self.worker_id, status, **values)
        if not finished:
            log.warning("job %d was no longer ours to finish as %s", job_id, status)

    def _progress_callback(
        self, job_id: int, beat: Heartbeat, phase: JobPhase = JobPhase.TRAINING
    ) -> Callable[[TrainingProgress], None]:
        def progress(report: TrainingProgress) -> None:
            with transaction(self.write_sessions) as session:
                state = jobs.record_progress(
                    session,
                    job_id,
                    self.worker_id,
                    epoch=report.epoch,
                    epochs=report.epochs,
                    loss=report.loss,
                    elapsed_s=report.elapsed_s,
                    phase=phase,
                )
                if state.owned:  # the curve stays viewable after the job ends
                    curves.record_point(
                        session,
                        job_id,
                        epoch=report.epoch,
                        epochs=report.epochs,
                        loss=report.loss,
                        elapsed_s=report.elapsed_s,
                        validation_rmse=report.validation_rmse,
                        phase=phase,
                    )
            self._check(state.owned and not beat.lost.is_set(), state.cancel_requested, beat)

        return progress

    def _check(self, owned: bool, cancel: bool, beat: Heartbeat) -> None:
        if self.stop.is_set():
            raise JobInterruptedError(JobStatus.FAILED, "the worker was shut down during training")
        if not owned:
            raise JobLostError("the job is no longer running under this worker")
        if cancel or beat.cancel.is_set():
            raise JobInterruptedError(JobStatus.CANCELLED, "cancelled by an admin request")

    def run_job(self, job: TrainingJob) -> None:
        """Run one claimed job to its end: succeeded, failed or cancelled."""
        log.info("job %d: training %s %s", job.job_id, job.algorithm, job.config)
        settings = self.settings
        with Heartbeat(
            self.write_sessions, job.job_id, self.worker_id, settings.heartbeat_interval
        ) as beat:
            try:
                self._run_job(job, beat)
            except JobLostError as exc:
                log.warning("job %d: %s; dropping its result", job.job_id, exc)
            except JobInterruptedError as exc:
                log.info("job %d %s: %s", job.job_id, exc.status, exc.reason)
                self._finish(job.job_id, exc.status, error=exc.reason)
            except InsufficientDataError as exc:
                log.warning("job %d failed: %s", job.job_id, exc)
                self._finish(job.job_id, JobStatus.FAILED, error=str(exc))
            except Exception as exc:
                log.exception("job %d failed", job.job_id)
                self._finish(job.job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")

    def _run_job(self, job: TrainingJob, beat: Heartbeat) -> None:
        settings = self.settings
        uses_features = create_model(job.algorithm, job.config).uses_features
        snapshot = read_ratings_snapshot(self.engine, with_features=uses_features)
        info = snapshot_info(snapshot)
        with transaction(self.write_sessions) as session:
            summary = info.summary()
            if snapshot.features is not None:
                summary.update(snapshot.features.summary())
            state = jobs.record_snapshot(
                session, job.job_id, self.worker_id, summary, snapshot.stored_until
            )
        self._check(state.owned, state.cancel_requested, beat)
        data = RatingsData(
            users=snapshot.users,
            items=snapshot.items,
            values=snapshot.values,
            user_ids=snapshot.user_ids,
            item_ids=snapshot.item_ids,
            info=info,
            features=None
            if snapshot.features is None
            else FeatureData.of(
                snapshot.features.user_attributes,
                snapshot.features.item_tags,
                snapshot.features.item_attributes,
            ),
        )
        outcome = train_and_evaluate(
            job.algorithm,
            job.config,
            data,
            validation_fraction=settings.validation_fraction,
            seed=settings.training_seed,
            gate_margin=settings.gate_margin,
            progress=self._progress_callback(job.job_id, beat),
        )
        self._check(not beat.lost.is_set(), False, beat)
        report = outcome.report()
        if not outcome.gate.passed:
            log.warning("job %d failed the sanity gate: %s", job.job_id, outcome.gate.reason)
            self._finish(
                job.job_id,
                JobStatus.FAILED,
                metrics=report,
                error=f"sanity gate failed: {outcome.gate.reason}",
            )
            return
        if settings.refit_on_snapshot:
            outcome = refit(
                outcome, data, progress=self._progress_callback(job.job_id, beat, JobPhase.REFIT)
            )
            self._check(not beat.lost.is_set(), False, beat)
            report = outcome.report()
        artifact = write_model_artifact(outcome, self.artifact_dir, info, job.job_id)
        new = ModelVersion(
            algorithm=job.algorithm,
            config=outcome.model.config.model_dump(mode="json"),
            artifact=artifact.path.name,
            sha256=artifact.sha256,
            size_bytes=artifact.size_bytes,
            n_ratings=info.n_ratings,
            n_users=info.n_users,
            n_items=info.n_items,
            newest_rating_at=info.newest_rating_at,
            snapshot_taken_at=info.taken_at,
            stored_until=info.stored_until,
            metrics=report,
        )
        with transaction(self.write_sessions) as session:
            version = versions.publish_version(
                session, job.job_id, self.worker_id, new, activate=True
            )
        if version is None:
            artifact.path.unlink(missing_ok=True)
            log.warning("job %d was taken from this worker; its artifact was dropped", job.job_id)
            return
        log.info(
            "job %d succeeded: version %d (%s) is active; %s",
            job.job_id,
            version.version,
            version.algorithm,
            outcome.gate.reason,
        )
        self._prune_quietly()

    # ----- retention --------------------------------------------------------------------------
    def _prune_quietly(self) -> None:
        try:
            self.prune_artifacts()
        except Exception:  # retention can wait for the next publish or restart
            log.exception("artifact retention failed")

    def prune_artifacts(self) -> list[int]:
        """Apply artifact retention (see `retention.prune_artifacts`); returns pruned versions."""
        return prune_artifacts(
            self.sessions, self.write_sessions, self.artifact_dir, self.settings.keep_versions
        )


def run_worker(settings: Settings, once: bool = False) -> int:
    """Entry point of `mfserve worker`: work until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    problem = default_model_problem(settings)
    if problem is not None:
        log.error("%s", problem)
        return 2
    engine = create_db_engine(settings.database_url)
    try:
        try:
            check_schema(engine)
        except SchemaNotCurrentError as exc:
            log.error("%s", exc)
            return 2
        threads = configure_threads(settings.worker_threads)
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: finishing up", signum)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker = Worker(settings, engine, stop=stop)
            log.info("worker %s uses %d torch threads", worker.worker_id, threads)
            worker.run(once=once)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        engine.dispose()
    return 0
