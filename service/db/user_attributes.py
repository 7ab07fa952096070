"""Users' attributes: put and get one user's, and read everyone's for training and serving."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.tables import user_attributes, users


@dataclass(frozen=True)
class StoredAttributes:
    """One user's attributes and when they were last set."""

    user: str
    attributes: dict[str, Any]
    updated_at: datetime | None
    """None when the user never had attributes set."""


def put_user_attributes(
    session: Session, user: str, attributes: dict[str, Any], *, now: datetime
) -> tuple[StoredAttributes, bool]:
    """Create the user if unknown and replace their attributes; returns them and whether the
    user was created."""
    connection = session.connection()
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    created = connection.execute(
        dialect.insert(users)
        .values(external_id=user, created_at=now, history_changed_at=now, history_version=0)
        .on_conflict_do_nothing(index_elements=["external_id"])
        .returning(users.c.id)
    ).scalar_one_or_none()
    user_id = connection.execute(
        select(users.c.id).where(users.c.external_id == user).with_for_update(key_share=True)
    ).scalar_one()
    insert = dialect.insert(user_attributes).values(
        user_id=user_id, attributes=attributes, updated_at=now
    )
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["user_id"],
            set_={"attributes": insert.excluded.attributes, "updated_at": now},
        )
    )
    session.flush()
    return StoredAttributes(user, attributes, now), created is not None


def get_user_attributes(session: Session, user: str) -> StoredAttributes | None:
    """A known user's attributes (empty when never set), or None for an unknown user."""
    row = session.execute(
        select(users.c.id, user_attributes.c.attributes, user_attributes.c.updated_at)
        .outerjoin(user_attributes, user_attributes.c.user_id == users.c.id)
        .where(users.c.external_id == user)
    ).one_or_none()
    if row is None:
        return None
    if row[1] is None:
        return StoredAttributes(user, {}, None)
    return StoredAttributes(user, dict(row[1]), row[2])


def attributes_fingerprint(connection: Connection) -> tuple[int, datetime | None]:
    """(count, newest update time) of the stored attributes: changes when any user's do, and
    when a user with attributes is deleted."""
    count, newest = connection.execute(
        select(func.count(), func.max(user_attributes.c.updated_at))
    ).one()
    return int(count), newest


def read_all_user_attributes(connection: Connection) -> dict[str, dict[str, Any]]:
    """Every user's non-empty attributes by external user id."""
    rows = connection.execute(
        select(users.c.external_id, user_attributes.c.attributes).join(
            users, users.c.id == user_attributes.c.user_id
        )
    )
    return {str(user): dict(attributes) for user, attributes in rows if attributes}
