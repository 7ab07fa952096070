"""Storing validated ratings: create unknown users and items, upsert, record history changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from service.db import postgres_upsert, sqlite_upsert


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


def upsert_ratings(session: Session, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
    """Store a batch in the session's (write) transaction; the newest timestamp of a pair wins.

    Of rows for one (user, item) pair the newest event time wins, equal times the later row,
    within the batch and against what is stored.
    """
    return upsert_batches(session.connection(), [batch], [now])[0]


def upsert_batches(
    connection: Connection, batches: Sequence[RatingBatch], nows: Sequence[datetime]
) -> list[UpsertCounts]:
    """Store several batches in one transaction with statements shared by all of them.

    The outcome, stored rows and each batch's counts alike, is that of upserting the batches
    one after another in this order (`nows[k]`: when batch k arrived). Users are locked in a
    fixed order first, so that concurrent writers on PostgreSQL wait instead of deadlocking.
    """
    winners = [winning_rows(batch) for batch in batches]
    if not any(winners):
        return [UpsertCounts(0, 0, 0) for _ in batches]
    postgres = connection.dialect.name == "postgresql"
    backend: Any = postgres_upsert if postgres else sqlite_upsert
    group_now = max(nows)
    cursor = _driver_cursor(connection)
    try:
        pairs = list(zip(batches, winners, strict=True))
        user_names = {batch.users[i] for batch, rows in pairs for i in rows}
        item_names = {batch.items[i] for batch, rows in pairs for i in rows}
        user_ids = backend.resolve_users(cursor, sorted(user_names), group_now)
        item_ids = backend.resolve_items(cursor, sorted(item_names), group_now)
        time_key = backend.time_key
        # (batch index, user id, item id, rating, event time key, stored-at key), arrival order
        rows = [
            (
                index,
                user_ids[batch.users[i]],
                item_ids[batch.items[i]],
                batch.ratings[i],
                time_key(batch.event_times[i]),
                time_key(nows[index]),
            )
            for index, (batch, batch_winners) in enumerate(pairs)
            for i in batch_winners
        ]
        if postgres and len(batches) == 1:
            # One batch: PostgreSQL's upsert itself tells inserted from updated rows.
            writes = sorted(row[1:] for row in rows)
            inserted, updated, changed = backend.write_ratings(cursor, writes)
            counts = [UpsertCounts(inserted, updated, len(batches[0]) - inserted - updated)]
        else:
            stored = backend.stored_times(cursor, sorted({(row[1], row[2]) for row in rows}))
            counts, writes = _replay(rows, stored, [len(batch) for batch in batches])
            if writes:
                backend.write_ratings(cursor, writes)
            changed = sorted({write[0] for write in writes})
        if changed:
            backend.touch_users(cursor, changed, group_now)
    finally:
        cursor.close()
    return counts


def _driver_cursor(connection: Connection) -> Any:
    """A cursor of the DB-API connection under `connection`, in its transaction.

    SQLAlchemy's statement and result handling costs more than the database's own work here.
    """
    raw = connection.connection
    if connection.dialect.name == "postgresql":
        return raw.driver_connection.cursor()  # type: ignore[union-attr]
    return raw.dbapi_connection.cursor()  # type: ignore[union-attr]


def winning_rows(batch: RatingBatch) -> list[int]:
    """Indices of the rows that win within the batch: newest time, ties to the later row."""
    if len(batch) == 1:
        return [0]
    best: dict[tuple[str, str], int] = {}
    times = batch.event_times
    for index, key in enumerate(zip(batch.users, batch.items, strict=True)):
        current = best.get(key)
        if current is None or times[index] >= times[current]:
            best[key] = index
    return sorted(best.values())


_Write = tuple[int, int, float | None, Any, Any]
"""(user id, item id, rating, event time key, stored-at key) of a row to upsert."""


def _replay(
    rows: list[tuple[int, int, int, float | None, Any, Any]],
    stored: dict[tuple[int, int], Any],
    sizes: list[int],
) -> tuple[list[UpsertCounts], list[_Write]]:
    """Each batch's counts as if the batches ran one after another, and the rows to write.

    A row replaces what its pair holds (stored, or written by an earlier row) when its event
    time is newer or equal; the last such row of each pair is the one written.
    """
    inserted = [0] * len(sizes)
    updated = [0] * len(sizes)
    current = dict(stored)
    final: dict[tuple[int, int], _Write] = {}
    for index, user_id, item_id, rating, event_key, stored_key in rows:
        pair = (user_id, item_id)
        previous = current.get(pair)
        if previous is None:
            inserted[index] += 1
        elif event_key >= previous:
            updated[index] += 1
        else:
            continue
        current[pair] = event_key
        final[pair] = (user_id, item_id, rating, event_key, stored_key)
    counts = [
        UpsertCounts(inserted[k], updated[k], sizes[k] - inserted[k] - updated[k])
        for k in range(len(sizes))
    ]
    return counts, [final[pair] for pair in sorted(final)]


def touch_users(connection: Connection, user_ids: Sequence[int], now: datetime) -> None:
    """Record that these users' histories changed: bump the version, set the time."""
    if not user_ids:
        return
    backend: Any = postgres_upsert if connection.dialect.name == "postgresql" else sqlite_upsert
    cursor = _driver_cursor(connection)
    try:
        backend.touch_users(cursor, user_ids, now)
    finally:
        cursor.close()
