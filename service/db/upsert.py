"""Storing validated ratings: create unknown users and items, upsert, record history changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from service.db import postgres_prepared, postgres_stage, postgres_upsert, sqlite_upsert


@dataclass(slots=True)
class RatingBatch:
    """Validated ratings as parallel columns; `event_times` are aware UTC datetimes."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)
    event_times: list[datetime] = field(default_factory=list)
    prepared: postgres_prepared.PreparedRows | None = field(default=None, repr=False, compare=False)
    """The winning rows made ready for PostgreSQL by `prepare_batch` (`db.postgres_prepared`)."""
    winners: list[int] | None = field(default=None, repr=False, compare=False)
    """`winning_rows` of the batch, once SQLite's `prepare_batch` found them."""
    time_keys: list[str] | None = field(default=None, repr=False, compare=False)
    """Each row's event time as SQLite stores it, once `prepare_batch` made them."""

    def __len__(self) -> int:
        return len(self.users)


def prepare_batch(batch: RatingBatch, dialect: str) -> None:
    """Do the client's share of storing `batch` now (in any thread), ahead of `upsert_*`.

    On PostgreSQL the batch then takes `db.postgres_prepared`'s path whatever its size; on
    SQLite its winning rows and stored time keys are found here instead of in the writer.
    """
    if dialect == "postgresql" and len(batch):
        event_us = list(map(postgres_prepared.unix_us, batch.event_times))
        batch.prepared = prepare_columns(batch.users, batch.items, batch.ratings, event_us)
    elif dialect == "sqlite" and len(batch):
        batch.winners = winning_rows(batch)
        batch.time_keys = [sqlite_upsert.time_key(time) for time in batch.event_times]


def prepare_columns(
    users: list[str], items: list[str], ratings: list[float | None], event_us: list[int]
) -> postgres_prepared.PreparedRows:
    """Valid rows as parallel columns (event times in Unix epoch microseconds) made ready for
    PostgreSQL's prepared path (`upsert_prepared`), in any thread."""
    rows = winners(users, items, event_us)
    if len(rows) < len(users):
        return postgres_prepared.prepare_rows(
            len(users),
            [users[i] for i in rows],
            [items[i] for i in rows],
            [ratings[i] for i in rows],
            [event_us[i] for i in rows],
        )
    return postgres_prepared.prepare_rows(len(users), users, items, ratings, event_us)


def upsert_prepared(
    session: Session, rows: postgres_prepared.PreparedRows, *, now: datetime
) -> UpsertCounts:
    """Store `prepare_columns`' rows in the session's (write) transaction, as `upsert_ratings`
    would store the batch they came from (PostgreSQL)."""
    cursor = _driver_cursor(session.connection())
    try:
        inserted, updated = postgres_prepared.write_prepared(cursor, rows, now)
    finally:
        cursor.close()
    return UpsertCounts(inserted, updated, len(rows) - inserted - updated)


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
    postgres = connection.dialect.name == "postgresql"
    if postgres and len(batches) == 1 and batches[0].prepared is not None:
        return [_upsert_prepared(connection, batches[0], nows[0])]
    if postgres and len(batches) == 1 and len(batches[0]) >= postgres_stage.STAGE_MIN_ROWS:
        return [_upsert_staged(connection, batches[0], nows[0])]
    winners = [
        batch.winners if batch.winners is not None else winning_rows(batch) for batch in batches
    ]
    if not any(winners):
        return [UpsertCounts(0, 0, 0) for _ in batches]
    backend: Any = postgres_upsert if postgres else sqlite_upsert
    group_now = max(nows)
    cursor = _driver_cursor(connection)
    try:
        pairs = list(zip(batches, winners, strict=True))
        user_names = {batch.users[i] for batch, rows in pairs for i in rows}
        item_names = {batch.items[i] for batch, rows in pairs for i in rows}
        user_ids = backend.resolve_users(cursor, sorted(user_names), group_now)
        item_ids = backend.resolve_items(cursor, sorted(item_names), group_now)
        if postgres and len(batches) == 1:
            # One batch: PostgreSQL's upsert itself tells inserted from updated rows.
            batch, rows = pairs[0]
            inserted, updated = postgres_upsert.write_batch(
                cursor,
                [user_ids[batch.users[i]] for i in rows],
                [item_ids[batch.items[i]] for i in rows],
                [batch.ratings[i] for i in rows],
                [batch.event_times[i] for i in rows],
                nows[0],
            )
            return [UpsertCounts(inserted, updated, len(batch) - inserted - updated)]
        time_key = backend.time_key
        # (batch index, user id, item id, rating, event time key, stored-at key), arrival order
        rows_in_order: list[tuple[int, int, int, float | None, Any, Any]] = []
        for index, (batch, batch_winners) in enumerate(pairs):
            users, items, ratings = batch.users, batch.items, batch.ratings
            stored_key = time_key(nows[index])
            keys = batch.time_keys if not postgres else None
            if keys is None:
                keys = list(map(time_key, batch.event_times))
            rows_in_order += [
                (index, user_ids[users[i]], item_ids[items[i]], ratings[i], keys[i], stored_key)
                for i in batch_winners
            ]
        pair_keys = sorted({(row[1], row[2]) for row in rows_in_order})
        stored = backend.stored_times(cursor, pair_keys)
        counts, writes = _replay(rows_in_order, stored, [len(batch) for batch in batches])
        if writes:
            backend.write_ratings(cursor, writes)
        changed = sorted({write[0] for write in writes})
        if changed:
            backend.touch_users(cursor, changed, group_now)
    finally:
        cursor.close()
    return counts


def _upsert_staged(connection: Connection, batch: RatingBatch, now: datetime) -> UpsertCounts:
    """Store one large batch through PostgreSQL's staging path (`db.postgres_stage`)."""
    rows = postgres_stage.encode(batch)
    cursor = _driver_cursor(connection)
    try:
        inserted, updated = postgres_stage.write_batch(cursor, rows, now)
    finally:
        cursor.close()
    return UpsertCounts(inserted, updated, len(batch) - inserted - updated)


def _upsert_prepared(connection: Connection, batch: RatingBatch, now: datetime) -> UpsertCounts:
    """Store one batch that `prepare_batch` made ready for PostgreSQL (`db.postgres_prepared`)."""
    assert batch.prepared is not None
    cursor = _driver_cursor(connection)
    try:
        inserted, updated = postgres_prepared.write_prepared(cursor, batch.prepared, now)
    finally:
        cursor.close()
    return UpsertCounts(inserted, updated, len(batch) - inserted - updated)


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
    return winners(batch.users, batch.items, batch.event_times)


def winners(users: list[str], items: list[str], times: Sequence[Any]) -> list[int]:
    """Indices of the winning rows of parallel columns: newest time, ties to the later row."""
    if len(users) == 1:
        return [0]
    if len(set(zip(users, items, strict=True))) == len(users):
        return list(range(len(users)))  # no pair twice: every row wins
    best: dict[tuple[str, str], int] = {}
    for index, key in enumerate(zip(users, items, strict=True)):
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
