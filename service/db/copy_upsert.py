"""PostgreSQL bulk upsert: COPY the rows into a temporary table, then one set-based upsert."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

COPY_MIN_ROWS = 2_000
"""Batches of at least this many rows go through COPY; smaller ones through unnested arrays."""

_CREATE_STAGE = """
    CREATE TEMPORARY TABLE IF NOT EXISTS rating_stage (
        user_id integer NOT NULL,
        item_id integer NOT NULL,
        rating double precision,
        event_at timestamptz NOT NULL
    ) ON COMMIT DELETE ROWS
"""

_COPY_STAGE = "COPY rating_stage (user_id, item_id, rating, event_at) FROM STDIN (FORMAT BINARY)"

# The foreign keys of `ratings` stay checked: every id comes from the users and items rows
# that `upsert_ratings` created or found (and, for users, locked) in this transaction.
_UPSERT_FROM_STAGE = """
    WITH written AS (
        INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
        SELECT user_id, item_id, rating, event_at, %(stored_at)s
        FROM rating_stage
        ORDER BY user_id, item_id
        ON CONFLICT (user_id, item_id) DO UPDATE
        SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
        WHERE excluded.event_at >= ratings.event_at
        RETURNING user_id, (xmax = 0) AS inserted
    )
    SELECT user_id, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
    FROM written GROUP BY user_id
"""


def copy_upsert_ratings(
    connection: Connection, rows: list[tuple[int, int, float | None, datetime]], now: datetime
) -> tuple[int, int, list[int]]:
    """Upsert (user_id, item_id, rating, event_at) rows, at most one per pair, through COPY.

    Returns the rows inserted, the rows updated and the users whose history changed.
    """
    connection.exec_driver_sql(_CREATE_STAGE)
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute("TRUNCATE rating_stage")  # rows left by an earlier batch of this transaction
        with cursor.copy(_COPY_STAGE) as copy:
            copy.set_types(["int4", "int4", "float8", "timestamptz"])
            for row in rows:
                copy.write_row(row)
        cursor.execute(_UPSERT_FROM_STAGE, {"stored_at": now})
        inserted = updated = 0
        changed: list[int] = []
        for user_id, user_inserted, user_updated in cursor.fetchall():
            changed.append(user_id)
            inserted += user_inserted
            updated += user_updated
        cursor.execute("TRUNCATE rating_stage")
    return inserted, updated, changed
