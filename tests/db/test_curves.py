"""Training curve points in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from service.db import curves, jobs
from service.db.session import make_sessionmaker, transaction

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_points_are_kept_per_phase_in_recorded_order_and_a_repeat_replaces(
    engine: Engine,
) -> None:
    writes = make_sessionmaker(engine, write=True)
    with transaction(writes) as session:
        job_id = jobs.enqueue_job(session, "flexmf-explicit", {}).job_id
        other = jobs.enqueue_job(session, "als-biased", {}).job_id
    moments = (T0 + timedelta(seconds=s) for s in range(100))
    with transaction(writes) as session:
        for epoch in (1, 2, 3):
            curves.record_point(
                session, job_id, epoch=epoch, epochs=3, loss=1.0 / epoch, elapsed_s=epoch,
                validation_rmse=0.9 - epoch / 10, now=next(moments),
            )  # fmt: skip
        curves.record_point(
            session, job_id, epoch=1, epochs=2, loss=0.5, elapsed_s=1.0, phase="refit",
            now=next(moments),
        )  # fmt: skip
        curves.record_point(
            session, job_id, epoch=2, epochs=2, loss=math.nan, elapsed_s=2.0, phase="refit",
            now=next(moments),
        )  # fmt: skip
        curves.record_point(session, other, epoch=1, epochs=1, loss=2.0, elapsed_s=0.1)
    with transaction(writes) as session:  # the worker reports an epoch again: replaced
        curves.record_point(
            session, job_id, epoch=2, epochs=2, loss=0.25, elapsed_s=2.5, phase="refit",
            now=next(moments),
        )  # fmt: skip

    with transaction(make_sessionmaker(engine)) as session:
        points = curves.read_curve(session, job_id)
        assert [(p.phase, p.epoch) for p in points] == [
            ("training", 1),
            ("training", 2),
            ("training", 3),
            ("refit", 1),
            ("refit", 2),
        ]
        assert [p.validation_rmse for p in points[:3]] == pytest.approx([0.8, 0.7, 0.6])
        assert (points[-1].loss, points[-1].elapsed_s) == (0.25, 2.5)
        assert points[3].validation_rmse is None
        assert len(curves.read_curve(session, other)) == 1
        assert curves.read_curve(session, 999) == []


def test_a_non_finite_loss_is_stored_as_null(engine: Engine) -> None:
    writes = make_sessionmaker(engine, write=True)
    with transaction(writes) as session:
        job_id = jobs.enqueue_job(session, "als-biased", {}).job_id
        curves.record_point(
            session, job_id, epoch=1, epochs=1, loss=math.inf, elapsed_s=0.1,
            validation_rmse=math.nan,
        )  # fmt: skip
    with transaction(make_sessionmaker(engine)) as session:
        (point,) = curves.read_curve(session, job_id)
    assert (point.loss, point.validation_rmse) == (None, None)
