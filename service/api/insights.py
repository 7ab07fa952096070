"""Admin reads behind the dashboard: a job's training curve, ingest counts, lookups.

Every route needs the admin token, like the rest of the admin API (`api/admin.py`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.api.admin import JobId, require_admin
from service.api.deps import SessionDep, UserPath
from service.api.insights_schemas import (
    CurveOut,
    CurvePointOut,
    LatestRatingOut,
    LatestRatingsOut,
    StatsOut,
    TitlesOut,
)
from service.db import curves, lookups, stats
from service.domain import training
from service.errors import NotFoundError

MAX_DAYS = 31
"""Longest window of `GET /admin/stats`, in days."""

MAX_TITLES = 1000
"""Most item ids one `GET /admin/item-titles` call takes."""

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])

DaysQuery = Annotated[int, Query(ge=1, le=MAX_DAYS, description=f"window in days, 1 to {MAX_DAYS}")]
LatestQuery = Annotated[int, Query(ge=1, le=1000, description="how many ratings, 1 to 1000")]
ItemsQuery = Annotated[
    list[str],
    Query(min_length=1, max_length=MAX_TITLES, description="item id (repeatable)"),
]


@router.get("/admin/jobs/{job_id}/curve", summary="A job's training curve")
def job_curve(job_id: JobId, session: SessionDep) -> CurveOut:
    """Loss per epoch (and validation RMSE where measured), live while the job runs."""
    job = training.get_job(session, job_id)
    points = curves.read_curve(session, job_id)
    return CurveOut(
        job_id=job.job_id,
        status=job.status,
        algorithm=job.algorithm,
        points=[CurvePointOut.model_validate(point) for point in points],
    )


@router.get("/admin/stats", summary="Ingest counts")
def ingest_stats(session: SessionDep, days: DaysQuery = 7) -> StatsOut:
    """Ratings stored per UTC hour over the last `days` days, and users, items, ratings counts."""
    return StatsOut.model_validate(stats.ingest_stats(session, hours=days * 24))


@router.get("/admin/users/{user}/latest", summary="A user's latest ratings")
def latest_ratings(user: UserPath, session: SessionDep, n: LatestQuery = 20) -> LatestRatingsOut:
    """The user's `n` most recent ratings (by timestamp), with item titles; 404 for no such user."""
    found = lookups.latest_ratings(session, user, limit=n)
    if found is None:
        raise NotFoundError(f"unknown user {user!r}")
    return LatestRatingsOut(
        user=user,
        items=[
            LatestRatingOut(item=r.item, title=r.title, rating=r.rating, timestamp=r.event_at)
            for r in found
        ],
    )


@router.get("/admin/item-titles", summary="Titles of items")
def item_titles(session: SessionDep, item: ItemsQuery) -> TitlesOut:
    """The title of each item asked for (null where it has none); unknown ids listed apart."""
    titles = lookups.item_titles(session, item)
    unknown = sorted({i for i in item if i not in titles})
    return TitlesOut(titles=titles, unknown_items=unknown)
