"""SQLite's statements of the rating upsert (the write lock is held: BEGIN IMMEDIATE).

Each function takes a DB-API cursor of the transaction; `upsert.upsert_batches` calls them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def time_key(value: datetime) -> str:
    """A UTC time as SQLAlchemy stores DateTime in SQLite (so that text order is time order)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # "YYYY-MM-DD HH:MM:SS.ffffff" without the "+00:00" suffix
    return value.isoformat(" ", "microseconds")[:26]


# Every statement takes its rows as one JSON parameter: one call into SQLite per statement,
# where `executemany` would release and retake the GIL for each row (and wait for the event
# loop's thread to hand it back each time).
_INSERT_USERS = """
    INSERT INTO users (external_id, created_at, history_changed_at, history_version)
    SELECT value, ?2, ?2, 0 FROM json_each(?1) WHERE true
    ON CONFLICT (external_id) DO NOTHING
"""

_INSERT_ITEMS = """
    INSERT INTO items (external_id, tags, attributes, created_at, updated_at)
    SELECT value, '[]', '{}', ?2, ?2 FROM json_each(?1) WHERE true
    ON CONFLICT (external_id) DO NOTHING
"""


def resolve_users(cursor: Any, names: list[str], now: datetime) -> dict[str, int]:
    """Internal ids of users, creating the missing ones."""
    return _resolve(cursor, "users", names, _INSERT_USERS, time_key(now))


def resolve_items(cursor: Any, names: list[str], now: datetime) -> dict[str, int]:
    """Internal ids of items, creating the missing ones with empty metadata."""
    return _resolve(cursor, "items", names, _INSERT_ITEMS, time_key(now))


def _resolve(cursor: Any, table: str, names: list[str], insert: str, now: str) -> dict[str, int]:
    """Ids of external ids in `table`, inserting the missing ones with `insert`."""
    # One JSON parameter instead of one per id: a statement SQLite can keep prepared.
    select = (
        f"SELECT external_id, id FROM {table} WHERE external_id IN (SELECT value FROM json_each(?))"
    )

    def find(wanted: list[str]) -> dict[str, int]:
        return dict(cursor.execute(select, (json.dumps(wanted),)))

    found = find(names)
    missing = [name for name in names if name not in found]
    if missing:
        cursor.execute(insert, (json.dumps(missing), now))
        found.update(find(missing))
    return found


_STORED_TIMES = """
    SELECT r.user_id, r.item_id, r.event_at
    FROM json_each(?) AS pair
    JOIN ratings AS r
      ON r.user_id = json_extract(pair.value, '$[0]')
     AND r.item_id = json_extract(pair.value, '$[1]')
"""


def stored_times(cursor: Any, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """The stored event time of each (user id, item id) pair that has a rating."""
    # Joined through the primary key: a row-value IN (VALUES ...) list would scan the table.
    rows = cursor.execute(_STORED_TIMES, (json.dumps(pairs),))
    return {(user_id, item_id): event_at for user_id, item_id, event_at in rows}


_UPSERT = """
    INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4
    FROM json_each(?) WHERE true
    ON CONFLICT (user_id, item_id) DO UPDATE
    SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
    WHERE excluded.event_at >= ratings.event_at
"""


def write_ratings(cursor: Any, rows: list[tuple[int, int, float | None, str, str]]) -> None:
    """Upsert (user id, item id, rating, event time, stored at) rows, at most one per pair."""
    cursor.execute(_UPSERT, (json.dumps(rows),))


_TOUCH = """
    UPDATE users SET history_version = history_version + 1, history_changed_at = ?
    WHERE id IN (SELECT value FROM json_each(?))
"""


def touch_users(cursor: Any, user_ids: Sequence[int], now: datetime) -> None:
    """Record that these users' histories changed: bump the version, set the time."""
    cursor.execute(_TOUCH, (time_key(now), json.dumps(list(user_ids))))
