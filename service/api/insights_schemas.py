"""Bodies of the dashboard's admin read routes: curves, ingest counts, lookups."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.db.jobs import JobStatus


class CurvePointOut(BaseModel):
    """One epoch of a job's training."""

    model_config = ConfigDict(from_attributes=True)

    phase: str = Field(description="training phase: `fit`, or a later one such as a refit")
    epoch: int
    epochs: int
    loss: float | None
    validation_rmse: float | None = Field(
        description="validation RMSE after this epoch, where the model measures it"
    )
    elapsed_s: float
    recorded_at: datetime


class CurveOut(BaseModel):
    """A job's training curve, epoch by epoch, as recorded so far."""

    job_id: int
    status: JobStatus
    algorithm: str
    points: list[CurvePointOut]


class HourCountOut(BaseModel):
    """Ratings stored in one UTC hour."""

    model_config = ConfigDict(from_attributes=True)

    hour: datetime
    ratings: int


class StatsOut(BaseModel):
    """Ratings stored per hour over the last days, and how many users, items and ratings exist."""

    model_config = ConfigDict(from_attributes=True)

    since: datetime
    hours: list[HourCountOut]
    users: int
    items: int
    ratings: int


class LatestRatingOut(BaseModel):
    """One of a user's latest ratings, with the item's title where metadata has one."""

    item: str
    title: str | None
    rating: float | None
    timestamp: datetime


class LatestRatingsOut(BaseModel):
    """A user's most recent ratings, newest first."""

    user: str
    items: list[LatestRatingOut]


class TitlesOut(BaseModel):
    """Titles of the items asked for; `unknown_items` lists ids the catalog does not hold."""

    titles: dict[str, str | None]
    unknown_items: list[str]
