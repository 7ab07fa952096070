"""PostgreSQL's path for one large batch: COPY it as sent into a staging table, then upsert it
with set-based statements that find and create its users and items on the server.

The client's part is one pass that writes the batch as COPY text (`encode`, which callers may
run ahead in another thread); no id travels back to the client between the statements.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from service.db.postgres_upsert import UPSERT_AND_TOUCH

STAGE_MIN_ROWS = 2_000
"""Single batches of at least this many rows take this path; smaller ones the array path."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class StagedRows(Protocol):
    """Parallel columns of validated ratings (a `db.upsert.RatingBatch`)."""

    users: list[str]
    items: list[str]
    ratings: list[float | None]
    event_times: list[datetime]


def encode(batch: StagedRows) -> bytes:
    """The batch as COPY text rows: user, item, rating, event time (epoch us), row number."""
    users, items = batch.users, batch.items
    # Valid ids hold no control characters, so only a backslash needs escaping.
    if any("\\" in name for name in users) or any("\\" in name for name in items):
        users = [name.replace("\\", "\\\\") for name in users]
        items = [name.replace("\\", "\\\\") for name in items]
    ratings = ["\\N" if value is None else repr(value) for value in batch.ratings]
    event_us = [str((time - _EPOCH) // _MICROSECOND) for time in batch.event_times]
    positions = map(str, range(len(users)))
    lines = map("\t".join, zip(users, items, ratings, event_us, positions, strict=True))
    return ("\n".join(lines) + "\n").encode()


_CREATE_STAGE = """
    CREATE TEMPORARY TABLE IF NOT EXISTS rating_batch_stage (
        user_name text NOT NULL,
        item_name text NOT NULL,
        rating double precision,
        event_us bigint NOT NULL,
        position integer NOT NULL
    ) ON COMMIT DELETE ROWS
"""

_COPY = "COPY rating_batch_stage (user_name, item_name, rating, event_us, position) FROM STDIN"

# Sequence values only for missing names: ON CONFLICT alone would draw one per row.
_INSERT_USERS = """
    INSERT INTO users (external_id, created_at, history_changed_at, history_version)
    SELECT name, %(now)s::timestamptz, %(now)s::timestamptz, 0
    FROM (SELECT DISTINCT user_name FROM rating_batch_stage) AS s(name)
    WHERE NOT EXISTS (SELECT FROM users AS u WHERE u.external_id = s.name)
    ON CONFLICT (external_id) DO NOTHING
"""

# Locks the batch's users in the same order as `postgres_upsert.resolve_users` (code point),
# so that concurrent writers of overlapping users wait for each other instead of deadlocking;
# answers how many of its users are missing (deleted since they were found or created).
_LOCK_USERS = """
    WITH wanted AS (SELECT DISTINCT user_name FROM rating_batch_stage),
    locked AS (
        SELECT u.id FROM users AS u JOIN wanted ON u.external_id = wanted.user_name
        ORDER BY u.external_id COLLATE "C" FOR NO KEY UPDATE OF u
    )
    SELECT (SELECT count(*) FROM wanted) - (SELECT count(*) FROM locked)
"""

_INSERT_ITEMS = """
    INSERT INTO items (external_id, tags, attributes, created_at, updated_at)
    SELECT name, '[]'::json, '{}'::json, %(now)s::timestamptz, %(now)s::timestamptz
    FROM (SELECT DISTINCT item_name FROM rating_batch_stage) AS s(name)
    WHERE NOT EXISTS (SELECT FROM items AS i WHERE i.external_id = s.name)
    ON CONFLICT (external_id) DO NOTHING
"""

# Of the rows of one pair the newest event time wins, equal times the later row (DISTINCT ON
# keeps the first of each pair in this order), and the rows go in key order; then the shared
# upsert (a newer or equal time replaces what is stored) and the touch of the changed users.
_UPSERT = UPSERT_AND_TOUCH.format(
    ctes="""
    winners AS (
        SELECT DISTINCT ON (u.id, i.id) u.id AS user_id, i.id AS item_id, s.rating,
            TIMESTAMPTZ 'epoch' + s.event_us * INTERVAL '1 microsecond' AS event_at
        FROM rating_batch_stage AS s
        JOIN users AS u ON u.external_id = s.user_name
        JOIN items AS i ON i.external_id = s.item_name
        ORDER BY u.id, i.id, s.event_us DESC, s.position DESC
    ),""",
    rows="SELECT user_id, item_id, rating, event_at, %(now)s::timestamptz FROM winners",
)


def write_batch(cursor: Any, rows: bytes, now: datetime) -> tuple[int, int]:
    """Upsert one batch of `encode`d rows; (rows inserted, rows updated).

    Its users are created if missing and locked until the transaction ends (what keeps every
    rating's user in existence without a foreign key), its items created if missing, and the
    users whose ratings changed are touched.
    """
    cursor.execute(_CREATE_STAGE)
    # Rows of an earlier batch of this transaction (commits empty it; TRUNCATE cost more).
    cursor.execute("DELETE FROM rating_batch_stage")
    with cursor.copy(_COPY) as copy:
        copy.write(rows)
    times = {"now": now}
    while True:
        cursor.execute(_INSERT_USERS, times)
        # A user deleted between its insert and the lock is created anew.
        if not cursor.execute(_LOCK_USERS).fetchone()[0]:
            break
    cursor.execute(_INSERT_ITEMS, times)
    inserted, updated = cursor.execute(_UPSERT, times).fetchone()
    return int(inserted), int(updated)
