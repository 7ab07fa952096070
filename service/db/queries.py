"""Reads and small writes of users, items and ratings; functions flush, callers commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.tables import Item, items, ratings, users
from service.db.upsert import touch_users


@dataclass(frozen=True, slots=True)
class UserRating:
    """One stored rating of a user, with the item's external id."""

    item_id: int
    item: str
    rating: float | None
    event_at: datetime


def find_user_id(session: Session, external_id: str, *, lock: bool = False) -> int | None:
    """The internal id of a user, or None; `lock` takes the user's row lock (PostgreSQL)."""
    query = select(users.c.id).where(users.c.external_id == external_id)
    if lock:
        query = query.with_for_update(key_share=True)
    return session.execute(query).scalar_one_or_none()


def find_item_id(session: Session, external_id: str) -> int | None:
    """The internal id of an item, or None."""
    query = select(items.c.id).where(items.c.external_id == external_id)
    return session.execute(query).scalar_one_or_none()


def list_user_ratings(
    session: Session, user_id: int, *, limit: int, after_item_id: int | None = None
) -> list[UserRating]:
    """A page of a user's ratings in item id order, starting after `after_item_id`."""
    query = (
        select(ratings.c.item_id, items.c.external_id, ratings.c.rating, ratings.c.event_at)
        .join(items, items.c.id == ratings.c.item_id)
        .where(ratings.c.user_id == user_id)
        .order_by(ratings.c.item_id)
        .limit(limit)
    )
    if after_item_id is not None:
        query = query.where(ratings.c.item_id > after_item_id)
    return [UserRating(*row) for row in session.execute(query)]


def delete_rating(session: Session, user: str, item: str, *, now: datetime) -> bool:
    """Delete one rating; False when the user, the item or the rating does not exist."""
    user_id = find_user_id(session, user, lock=True)
    item_id = find_item_id(session, item) if user_id is not None else None
    if user_id is None or item_id is None:
        return False
    result = session.execute(
        delete(ratings).where(ratings.c.user_id == user_id, ratings.c.item_id == item_id)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    touch_users(session.connection(), [user_id], now)
    session.flush()
    return True


def delete_user(session: Session, user: str) -> int | None:
    """Delete a user and all their ratings; the number of ratings deleted, or None if unknown."""
    query = select(users.c.id).where(users.c.external_id == user).with_for_update()
    user_id = session.execute(query).scalar_one_or_none()
    if user_id is None:
        return None
    result = session.execute(delete(ratings).where(ratings.c.user_id == user_id))
    session.execute(delete(users).where(users.c.id == user_id))
    session.flush()
    return int(result.rowcount)  # type: ignore[attr-defined]


def get_item(session: Session, external_id: str) -> Item | None:
    """An item with its metadata, or None."""
    return session.execute(select(Item).where(Item.external_id == external_id)).scalar()


def put_item(
    session: Session,
    external_id: str,
    *,
    title: str | None,
    tags: list[str],
    attributes: dict[str, Any],
    now: datetime,
) -> tuple[Item, bool]:
    """Create or replace an item's metadata; returns the item and whether it was created."""
    query = select(Item).where(Item.external_id == external_id).with_for_update()
    item = session.execute(query).scalar()
    created = item is None
    if item is None:
        # ON CONFLICT DO NOTHING: a concurrent POST /ratings may create the item first.
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(
            dialect.insert(items)
            .values(
                external_id=external_id,
                title=None,
                tags=[],
                attributes={},
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["external_id"])
        )
        item = session.execute(query).scalar_one()
    item.title = title
    item.tags = tags
    item.attributes = attributes
    item.updated_at = now
    session.flush()
    return item, created


def list_items(session: Session, *, limit: int, after_id: int | None = None) -> list[Item]:
    """A page of items in id order, starting after `after_id`."""
    query = select(Item).order_by(Item.id).limit(limit)
    if after_id is not None:
        query = query.where(Item.id > after_id)
    return list(session.execute(query).scalars())
