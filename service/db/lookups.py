"""Reads for the dashboard's lookups: a user's latest ratings, item titles by external id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import items, ratings, users


@dataclass(frozen=True)
class LatestRating:
    """One of a user's ratings, with the item's external id and title."""

    item: str
    title: str | None
    rating: float | None
    event_at: datetime


def latest_ratings(session: Session, user: str, *, limit: int) -> list[LatestRating] | None:
    """A user's `limit` most recent ratings (by the client's timestamp); None for no such user."""
    user_id = session.execute(
        select(users.c.id).where(users.c.external_id == user)
    ).scalar_one_or_none()
    if user_id is None:
        return None
    query = (
        select(items.c.external_id, items.c.title, ratings.c.rating, ratings.c.event_at)
        .join(items, items.c.id == ratings.c.item_id)
        .where(ratings.c.user_id == user_id)
        .order_by(ratings.c.event_at.desc(), items.c.external_id)
        .limit(limit)
    )
    return [LatestRating(*row) for row in session.execute(query)]


def item_titles(session: Session, external_ids: Sequence[str]) -> dict[str, str | None]:
    """The title of each known item among `external_ids` (None where it has none)."""
    if not external_ids:
        return {}
    query = select(items.c.external_id, items.c.title).where(
        items.c.external_id.in_(sorted(set(external_ids)))
    )
    return {str(item): title for item, title in session.execute(query)}
