"""Storing validated ratings: create unknown users and items, upsert, record history changes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    Table,
    any_,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.copy_upsert import COPY_MIN_ROWS, copy_upsert_ratings
from service.db.tables import items, users

SQLITE_CHUNK = 4_000
"""Rows per statement where SQLite binds one parameter per value (its limit is 32,766)."""


@dataclass(slots=True)
class RatingBatch:
    """Validated ratings as parallel columns; `event_times` are aware UTC datetimes."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)
    event_times: list[datetime] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What a batch did: new pairs, replaced ratings, and rows that changed nothing."""

    inserted: int
    updated: int
    ignored: int
    """Rows older than the stored rating, or superseded by a later row of the same batch."""


# (user_id, item_id, rating, event_at)
_Row = tuple[int, int, float | None, datetime]


def upsert_ratings(session: Session, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
    """Store a batch in the session's (write) transaction; the newest timestamp of a pair wins.

    Of rows for one (user, item) pair the newest event time wins, equal times the later row,
    within the batch and against what is stored. Users are locked in a fixed order first, so
    that concurrent batches on PostgreSQL wait for each other instead of deadlocking.
    """
    if not batch.users:
        return UpsertCounts(0, 0, 0)
    connection = session.connection()
    winners = _winning_rows(batch)
    user_ids = _resolve_ids(connection, users, {batch.users[i] for i in winners}, now, lock=True)
    item_ids = _resolve_ids(connection, items, {batch.items[i] for i in winners}, now, lock=False)
    rows: list[_Row] = sorted(
        (
            user_ids[batch.users[i]],
            item_ids[batch.items[i]],
            batch.ratings[i],
            batch.event_times[i],
        )
        for i in winners
    )
    if connection.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        inserted, updated, changed_users = copy_upsert_ratings(connection, rows, now)
    elif connection.dialect.name == "postgresql":
        inserted, updated, changed_users = _write_postgresql(connection, rows, now)
    else:
        inserted, updated, changed_users = _write_sqlite(connection, rows, now)
    touch_users(connection, changed_users, now)
    session.flush()
    return UpsertCounts(inserted, updated, len(batch) - inserted - updated)


def lock_group(session: Session, batches: Sequence[RatingBatch], *, now: datetime) -> None:
    """Create and lock every user and item of several batches at once (PostgreSQL only).

    Batches upserted one after another in one transaction would otherwise lock their users in
    per-batch order, and two such transactions could deadlock; this takes all locks up front
    in the one fixed order `upsert_ratings` uses. SQLite's single writer needs nothing.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    user_ids = {user for batch in batches for user in batch.users}
    item_ids = {item for batch in batches for item in batch.items}
    _resolve_ids(connection, users, user_ids, now, lock=True)
    _resolve_ids(connection, items, item_ids, now, lock=False)


def _winning_rows(batch: RatingBatch) -> list[int]:
    """Indices of the rows that win within the batch: newest time, ties to the later row."""
    best: dict[tuple[str, str], int] = {}
    times = batch.event_times
    for index, key in enumerate(zip(batch.users, batch.items, strict=True)):
        current = best.get(key)
        if current is None or times[index] >= times[current]:
            best[key] = index
    return list(best.values())


def _resolve_ids(
    connection: Connection, table: Table, external_ids: set[str], now: datetime, *, lock: bool
) -> dict[str, int]:
    """Internal ids of external ids, creating the missing rows (and locking users if asked)."""
    wanted = sorted(external_ids)
    found = _select_ids(connection, table, wanted)
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        defaults: dict[str, Any] = {"created_at": now}
        if table is users:
            defaults.update(history_changed_at=now, history_version=0)
        else:
            defaults.update(updated_at=now, tags=[], attributes={})
        postgres = connection.dialect.name == "postgresql"
        insert = (postgresql if postgres else sqlite).insert(table)
        statement = insert.on_conflict_do_nothing(index_elements=["external_id"])
        connection.execute(statement, [{"external_id": x, **defaults} for x in missing])
        found.update(_select_ids(connection, table, missing))
    if lock and connection.dialect.name == "postgresql":
        # Ordered by code point like `wanted`: every writer locks its users in one fixed order.
        column = table.c.external_id
        query = (
            select(table.c.id)
            .where(column == any_(bindparam("ids", wanted, type_=ARRAY(String))))
            .order_by(column.collate("C"))
            .with_for_update(key_share=True)
        )
        connection.execute(query).all()
    return found


def _select_ids(
    connection: Connection, table: Table, external_ids: Sequence[str]
) -> dict[str, int]:
    if connection.dialect.name == "postgresql":
        query = select(table.c.id, table.c.external_id).where(
            table.c.external_id == any_(bindparam("ids", list(external_ids), type_=ARRAY(String)))
        )
        return {external_id: id_ for id_, external_id in connection.execute(query)}
    found: dict[str, int] = {}
    for start in range(0, len(external_ids), SQLITE_CHUNK):
        chunk = tuple(external_ids[start : start + SQLITE_CHUNK])
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT id, external_id FROM {table.name} WHERE external_id IN ({marks})"
        found.update(
            (external_id, id_) for id_, external_id in connection.exec_driver_sql(sql, chunk)
        )
    return found


_POSTGRES_UPSERT = text(
    """
    WITH written AS (
        INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
        SELECT b.user_id, b.item_id, b.rating,
               TIMESTAMPTZ 'epoch' + b.event_us * INTERVAL '1 microsecond', :stored_at
        FROM unnest(
            CAST(:user_ids AS integer[]),
            CAST(:item_ids AS integer[]),
            CAST(:ratings AS double precision[]),
            CAST(:event_us AS bigint[])
        ) AS b(user_id, item_id, rating, event_us)
        ORDER BY b.user_id, b.item_id
        ON CONFLICT (user_id, item_id) DO UPDATE
        SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
        WHERE excluded.event_at >= ratings.event_at
        RETURNING user_id, (xmax = 0) AS inserted
    )
    SELECT user_id, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
    FROM written GROUP BY user_id
    """
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of numbers and nulls (much faster than adapting a list)."""
    return "{" + ",".join("NULL" if value is None else repr(value) for value in values) + "}"


def _write_postgresql(
    connection: Connection, rows: list[_Row], now: datetime
) -> tuple[int, int, list[int]]:
    """One INSERT … ON CONFLICT over unnested arrays; xmax tells inserts from updates."""
    result = connection.execute(
        _POSTGRES_UPSERT,
        {
            "stored_at": now,
            "user_ids": _array_literal(row[0] for row in rows),
            "item_ids": _array_literal(row[1] for row in rows),
            "ratings": _array_literal(row[2] for row in rows),
            "event_us": _array_literal((row[3] - _EPOCH) // _MICROSECOND for row in rows),
        },
    )
    inserted = updated = 0
    changed: list[int] = []
    for user_id, user_inserted, user_updated in result:
        changed.append(user_id)
        inserted += user_inserted
        updated += user_updated
    return inserted, updated, changed


def sqlite_time(value: datetime) -> str:
    """A UTC time as SQLAlchemy stores DateTime in SQLite (so that text order is time order)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # "YYYY-MM-DD HH:MM:SS.ffffff" without the "+00:00" suffix
    return value.isoformat(" ", "microseconds")[:26]


_SQLITE_STORED_TIMES = """
    SELECT r.user_id, r.item_id, r.event_at
    FROM json_each(?) AS pair
    JOIN ratings AS r
      ON r.user_id = json_extract(pair.value, '$[0]')
     AND r.item_id = json_extract(pair.value, '$[1]')
"""

_SQLITE_UPSERT = """
    INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (user_id, item_id) DO UPDATE
    SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
    WHERE excluded.event_at >= ratings.event_at
"""


def _write_sqlite(
    connection: Connection, rows: list[_Row], now: datetime
) -> tuple[int, int, list[int]]:
    """Read the stored times of the batch's pairs (the write lock is held), then upsert."""
    # The raw DB-API cursor: SQLAlchemy's per-row result and parameter handling costs more
    # than SQLite's own work here.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    # One JSON parameter joined through the primary key: a row-value IN (VALUES ...) list
    # would scan the whole table.
    pairs = json.dumps([row[:2] for row in rows])
    stored: dict[tuple[int, int], str] = {
        (user_id, item_id): event_at
        for user_id, item_id, event_at in cursor.execute(_SQLITE_STORED_TIMES, (pairs,))
    }
    stored_at = sqlite_time(now)
    writes: list[tuple[int, int, float | None, str, str]] = []
    inserted = updated = 0
    changed: set[int] = set()
    for user_id, item_id, value, event_time in rows:
        event_at = sqlite_time(event_time)
        previous = stored.get((user_id, item_id))
        if previous is None:
            inserted += 1
        elif event_at >= previous:
            updated += 1
        else:
            continue
        changed.add(user_id)
        writes.append((user_id, item_id, value, event_at, stored_at))
    if writes:
        cursor.executemany(_SQLITE_UPSERT, writes)
    cursor.close()
    return inserted, updated, sorted(changed)


def touch_users(connection: Connection, user_ids: Sequence[int], now: datetime) -> None:
    """Record that these users' histories changed: bump the version, set the time."""
    for start in range(0, len(user_ids), SQLITE_CHUNK):
        chunk = user_ids[start : start + SQLITE_CHUNK]
        connection.execute(
            update(users)
            .where(users.c.id.in_(chunk))
            .values(history_version=users.c.history_version + 1, history_changed_at=now)
        )
