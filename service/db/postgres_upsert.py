"""PostgreSQL's statements of the rating upsert: arrays for small writes, COPY for large ones.

Each function takes a psycopg cursor of the transaction; `upsert.upsert_batches` calls them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

COPY_MIN_ROWS = 2_000
"""Writes of at least this many rows go through COPY; smaller ones through unnested arrays."""


def time_key(value: datetime) -> datetime:
    """Event times compare as aware datetimes, as psycopg reads `timestamptz`."""
    return value


# Lookups join an unnested array instead of `= ANY(array)`: once psycopg prepares a statement,
# PostgreSQL's generic plan compares each table row with every array element in turn (the
# hashed `= ANY` needs a constant array), which made the item lookup the costliest statement.
_FIND = """
    SELECT t.external_id, t.id FROM unnest(string_to_array(%s, chr(31))) AS name
    JOIN {table} AS t ON t.external_id = name
"""
_FIND_USERS = _FIND.format(table="users")
_INSERT_USERS = """
    INSERT INTO users (external_id, created_at, history_changed_at, history_version)
    SELECT name, %(now)s, %(now)s, 0 FROM unnest(string_to_array(%(names)s, chr(31))) AS name
    ON CONFLICT (external_id) DO NOTHING
"""
# Every writer locks its users in one fixed order (code point, like the sorted `names`), so
# that concurrent writers of overlapping users wait for each other instead of deadlocking.
_LOCK_USERS = """
    SELECT u.external_id, u.id FROM unnest(%s::integer[]) AS wanted(id)
    JOIN users AS u ON u.id = wanted.id
    ORDER BY u.external_id COLLATE "C" FOR NO KEY UPDATE OF u
"""

_FIND_ITEMS = _FIND.format(table="items")
_INSERT_ITEMS = """
    INSERT INTO items (external_id, tags, attributes, created_at, updated_at)
    SELECT name, '[]'::json, '{}'::json, %(now)s, %(now)s
    FROM unnest(string_to_array(%(names)s, chr(31))) AS name
    ON CONFLICT (external_id) DO NOTHING
"""


def resolve_users(cursor: Any, names: list[str], now: datetime) -> dict[str, int]:
    """Internal ids of users, creating the missing ones; all of them locked for this writer.

    The lock is what keeps every rating's user in existence without a foreign key: a user
    deleted between the lookup and the lock is created anew, and once locked it cannot be
    deleted (`DELETE /users/{user}` locks it FOR UPDATE) before this transaction ends.
    """
    locked: dict[str, int] = {}
    while names:
        found = _resolve(cursor, names, _FIND_USERS, _INSERT_USERS, now)
        locked.update(cursor.execute(_LOCK_USERS, (list(found.values()),)).fetchall())
        names = [name for name in names if name not in locked]
    return locked


def resolve_items(cursor: Any, names: list[str], now: datetime) -> dict[str, int]:
    """Internal ids of items, creating the missing ones with empty metadata."""
    return _resolve(cursor, names, _FIND_ITEMS, _INSERT_ITEMS, now)


def _resolve(
    cursor: Any, names: list[str], find: str, insert: str, now: datetime
) -> dict[str, int]:
    """Ids of external ids, inserting the missing ones set-based (sequence values only for them)."""
    found: dict[str, int] = dict(cursor.execute(find, (_ID_SEPARATOR.join(names),)).fetchall())
    missing = _ID_SEPARATOR.join(name for name in names if name not in found)
    if missing:
        cursor.execute(insert, {"now": now, "names": missing})
        found.update(cursor.execute(find, (missing,)).fetchall())
    return found


_ID_SEPARATOR = "\x1f"
"""Joins external ids into one text parameter, split again by the server (`chr(31)`): a
control character, which no valid id holds, and far cheaper to send than a text array."""


_STORED_TIMES = """
    SELECT r.user_id, r.item_id, r.event_at
    FROM unnest(%s::integer[], %s::integer[]) AS pair(user_id, item_id)
    JOIN ratings AS r ON r.user_id = pair.user_id AND r.item_id = pair.item_id
"""


def stored_times(cursor: Any, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], datetime]:
    """The stored event time of each (user id, item id) pair that has a rating."""
    users = array_literal(pair[0] for pair in pairs)
    items = array_literal(pair[1] for pair in pairs)
    rows = cursor.execute(_STORED_TIMES, (users, items)).fetchall()
    return {(user_id, item_id): event_at for user_id, item_id, event_at in rows}


def array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of numbers and nulls (far cheaper than adapting a list)."""
    values = list(values)
    if None not in values:
        return "{" + ",".join(map(repr, values)) + "}"
    return "{" + ",".join("NULL" if value is None else repr(value) for value in values) + "}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The guard keeps a newer stored rating (the caller counted the outcome beforehand). Every id
# comes from the users and items rows found or created (users: locked) beforehand in this
# transaction; `ratings` has no foreign keys to check each row again (migration 0006).
_UPSERT = """
    INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
    {rows}
    ON CONFLICT (user_id, item_id) DO UPDATE
    SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
    WHERE excluded.event_at >= ratings.event_at
"""

_UPSERT_ARRAYS = _UPSERT.format(
    rows="""
        SELECT b.user_id, b.item_id, b.rating,
               TIMESTAMPTZ 'epoch' + b.event_us * INTERVAL '1 microsecond',
               TIMESTAMPTZ 'epoch' + b.stored_us * INTERVAL '1 microsecond'
        FROM unnest(
            %s::integer[], %s::integer[], %s::double precision[], %s::bigint[], %s::bigint[]
        ) AS b(user_id, item_id, rating, event_us, stored_us)
    """
)

# One request's rows share their stored-at time: one parameter instead of an array.
_UPSERT_ARRAYS_ONE_STORED_AT = _UPSERT.format(
    rows="""
        SELECT b.user_id, b.item_id, b.rating,
               TIMESTAMPTZ 'epoch' + b.event_us * INTERVAL '1 microsecond', %s::timestamptz
        FROM unnest(%s::integer[], %s::integer[], %s::double precision[], %s::bigint[])
            AS b(user_id, item_id, rating, event_us)
    """
)

# Rows chosen by `{rows}` (after the CTEs `{ctes}`, each ending in a comma) upserted with the
# same guard, counted (`xmax = 0` tells an inserted row from an updated one), and the users whose
# ratings changed touched, all in one statement; `%(now)s` is the stored-at and touch time.
UPSERT_AND_TOUCH = """
    WITH {ctes}
    written AS (
        INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
        {rows}
        ON CONFLICT (user_id, item_id) DO UPDATE
        SET rating = excluded.rating, event_at = excluded.event_at,
            stored_at = excluded.stored_at
        WHERE excluded.event_at >= ratings.event_at
        RETURNING user_id, (xmax = 0) AS inserted
    ),
    touched AS (
        UPDATE users SET history_version = history_version + 1,
            history_changed_at = %(now)s::timestamptz
        WHERE id IN (SELECT user_id FROM written)
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""

# One batch's rows, in any order (sorted here, so that row locks are taken in key order), one
# stored-at time.
BATCH_ROWS = """
    SELECT b.user_id, b.item_id, b.rating,
           TIMESTAMPTZ 'epoch' + b.event_us * INTERVAL '1 microsecond', %(now)s::timestamptz
    FROM unnest(
        %(users)s::integer[], %(items)s::integer[], %(ratings)s::double precision[],
        %(times)s::bigint[]
    ) AS b(user_id, item_id, rating, event_us)
    ORDER BY b.user_id, b.item_id
"""
"""The rows of array parameters `users`, `items`, `ratings`, `times` (epoch microseconds) with
stored-at `now`, in key order (so that row locks are taken in that order)."""

_UPSERT_BATCH = UPSERT_AND_TOUCH.format(ctes="", rows=BATCH_ROWS)


def write_batch(
    cursor: Any,
    user_ids: list[int],
    item_ids: list[int],
    ratings: list[float | None],
    event_times: list[datetime],
    now: datetime,
) -> tuple[int, int]:
    """Upsert one batch's columns (one row per pair) and touch the users whose ratings changed.

    Returns the rows inserted and the rows updated.
    """
    event_us = [(time - _EPOCH) // _MICROSECOND for time in event_times]
    parameters = {
        "now": now,
        "users": array_literal(user_ids),
        "items": array_literal(item_ids),
        "ratings": array_literal(ratings),
        "times": array_literal(event_us),
    }
    inserted, updated = cursor.execute(_UPSERT_BATCH, parameters).fetchone()
    return int(inserted), int(updated)


_CREATE_STAGE = """
    CREATE TEMPORARY TABLE IF NOT EXISTS rating_stage (
        user_id integer NOT NULL,
        item_id integer NOT NULL,
        rating double precision,
        event_at timestamptz NOT NULL,
        stored_at timestamptz NOT NULL
    ) ON COMMIT DELETE ROWS
"""

_COPY_STAGE = (
    "COPY rating_stage (user_id, item_id, rating, event_at, stored_at) FROM STDIN (FORMAT BINARY)"
)

_UPSERT_FROM_STAGE = _UPSERT.format(
    rows="SELECT user_id, item_id, rating, event_at, stored_at FROM rating_stage"
)


def write_ratings(
    cursor: Any, rows: list[tuple[int, int, float | None, datetime, datetime]]
) -> None:
    """Upsert (user id, item id, rating, event time, stored at) rows, one per pair, in key order."""
    if len(rows) < COPY_MIN_ROWS:
        columns = list(zip(*rows, strict=True))
        event_us = ((time - _EPOCH) // _MICROSECOND for time in columns[3])
        stored_at = columns[4][0]
        if columns[4].count(stored_at) == len(rows):
            arrays = [array_literal(column) for column in (*columns[:3], event_us)]
            cursor.execute(_UPSERT_ARRAYS_ONE_STORED_AT, [stored_at, *arrays])
        else:
            stored_us = ((time - _EPOCH) // _MICROSECOND for time in columns[4])
            arrays = [array_literal(column) for column in (*columns[:3], event_us, stored_us)]
            cursor.execute(_UPSERT_ARRAYS, arrays)
    else:
        cursor.execute(_CREATE_STAGE)
        cursor.execute("TRUNCATE rating_stage")  # rows of an earlier write of this transaction
        with cursor.copy(_COPY_STAGE) as copy:
            copy.set_types(["int4", "int4", "float8", "timestamptz", "timestamptz"])
            for row in rows:
                copy.write_row(row)
        cursor.execute(_UPSERT_FROM_STAGE)
        cursor.execute("TRUNCATE rating_stage")


_TOUCH = """
    UPDATE users SET history_version = history_version + 1, history_changed_at = %s
    FROM unnest(%s::integer[]) AS changed(id) WHERE users.id = changed.id
"""


def touch_users(cursor: Any, user_ids: Sequence[int], now: datetime) -> None:
    """Record that these users' histories changed: bump the version, set the time."""
    cursor.execute(_TOUCH, (now, array_literal(user_ids)))
