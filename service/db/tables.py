"""Database tables: users and items with external string ids, their ratings, and users'
attributes."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EXTERNAL_ID_LENGTH = 128
"""Longest external user or item id, in characters."""

MAX_ROW_ID = 2**31 - 1
"""Largest value of an `Integer` id column (PostgreSQL's INTEGER): job ids, versions, keys."""

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store every timestamp in UTC."""
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC timestamps, also where the backend dropped the zone."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def enum_column(enum: type[StrEnum]) -> Enum:
    """A VARCHAR(16) column holding an enum's values, read back as the enum."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,  # a named `check_one_of` instead, as the migrations made it
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


def check_one_of(column: str, enum: type[StrEnum]) -> CheckConstraint:
    """A CHECK constraint allowing exactly the enum's values."""
    values = ", ".join(f"'{member.value}'" for member in enum)
    return CheckConstraint(f"{column} IN ({values})", name=column)


class Base(DeclarativeBase):
    """Declarative base of every table, with constraint names that migrations can refer to."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class User(Base):
    """A user, known outside by `external_id` and inside by the dense integer `id`."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_LENGTH), unique=True)
    created_at: Mapped[datetime]
    # Not indexed, so that the history touch of every rating write is a HOT update (0007).
    history_changed_at: Mapped[datetime]
    """When a rating of this user was last added, replaced or deleted."""
    history_version: Mapped[int] = mapped_column(BigInteger, default=0)
    """Incremented by every change of this user's ratings; a snapshot records it to compare."""


class Item(Base):
    """An item, known outside by `external_id`, with optional metadata."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_LENGTH), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Rating(Base):
    """The newest rating of one user for one item; `rating` is null for an implicit interaction."""

    __tablename__ = "ratings"

    # (user_id, item_id) is the key and also the by-user index the recommend path reads.
    # No foreign keys (their per-row checks dominated bulk writes): the rating writers create
    # or find, and on PostgreSQL lock, the user and item in the same transaction
    # (`db.upsert`), deleting a user deletes their ratings (`db.queries.delete_user`), and
    # items are never deleted.
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rating: Mapped[float | None] = mapped_column(Float)
    event_at: Mapped[datetime]
    """When the interaction happened (the client's timestamp)."""
    stored_at: Mapped[datetime]
    """When this row was last written; the worker counts rows stored after its snapshot."""

    # BRIN on PostgreSQL (rows are appended in stored order), a B-tree on SQLite (0007).
    __table_args__ = (Index("ix_ratings_stored_at", "stored_at", postgresql_using="brin"),)


class UserAttributes(Base):
    """What a user told about themselves (age, country, …): JSON strings, numbers, booleans."""

    __tablename__ = "user_attributes"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    attributes: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(index=True)


users = cast(Table, User.__table__)
items = cast(Table, Item.__table__)
ratings = cast(Table, Rating.__table__)
user_attributes = cast(Table, UserAttributes.__table__)
