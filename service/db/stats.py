"""Counts for the dashboard: ratings stored per hour, and how many users, items and ratings exist.

`ratings` keeps the newest rating of each (user, item), so a rating that was later replaced
counts in the hour of its replacement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from service.db.tables import items, ratings, users


@dataclass(frozen=True)
class HourCount:
    """Ratings whose row was written in one UTC hour."""

    hour: datetime
    ratings: int


@dataclass(frozen=True)
class IngestStats:
    """Ratings stored per hour since `since` (every hour listed, empty ones as 0) and totals."""

    since: datetime
    hours: list[HourCount]
    users: int
    items: int
    ratings: int


def _hour_bucket(session: Session) -> ColumnElement[Any]:
    """The stored time truncated to its UTC hour, as the backend's text or timestamp."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", ratings.c.stored_at))
    # SQLite keeps naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff"
    return func.strftime("%Y-%m-%d %H:00:00", ratings.c.stored_at)


def _as_hour(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC, minute=0, second=0, microsecond=0)


def _start_of_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ingest_stats(session: Session, *, hours: int, now: datetime | None = None) -> IngestStats:
    """Ratings stored in each of the last `hours` hours (the current one included) and totals."""
    current = _start_of_hour(now or datetime.now(UTC))
    since = current - timedelta(hours=hours - 1)
    bucket = _hour_bucket(session).label("hour")
    query = select(bucket, func.count()).where(ratings.c.stored_at >= since).group_by(bucket)
    counted = {_as_hour(hour): int(count) for hour, count in session.execute(query)}
    series = [
        HourCount(hour, counted.get(hour, 0))
        for hour in (since + timedelta(hours=step) for step in range(hours))
    ]

    def total(table: Any) -> int:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())

    return IngestStats(
        since=since,
        hours=series,
        users=total(users),
        items=total(items),
        ratings=total(ratings),
    )
