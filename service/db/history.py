"""A user's rating history read for serving: one indexed query, no ORM objects."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import items, ratings, users


def user_history(session: Session, user: str) -> list[tuple[str, float | None]]:
    """The (item external id, rating) pairs of a user, empty for an unknown user."""
    query = (
        select(items.c.external_id, ratings.c.rating)
        .select_from(users)
        .join(ratings, ratings.c.user_id == users.c.id)
        .join(items, items.c.id == ratings.c.item_id)
        .where(users.c.external_id == user)
    )
    return [(str(item), rating) for item, rating in session.execute(query)]
