"""PostgreSQL's path for a batch made ready ahead (`mfserve import`'s chunks): the client's
share done in advance, then its new pairs COPYed straight into `ratings`.

Every writer of ratings (`upsert_batches`, the group and staging paths, rating and user
deletions) locks the rating's user first. Once this batch's users are locked, no other
transaction can insert, change or delete a rating of theirs, so the pairs found absent stay
absent until this transaction ends: they need no conflict handling, and COPY inserts them
for a fraction of an `INSERT ... ON CONFLICT`'s cost. Pairs already stored go through the
usual guarded upsert.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat, starmap
from operator import sub
from typing import Any

import psycopg

from service.db.postgres_upsert import BATCH_ROWS, array_literal, touch_users

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800 * 1_000_000
"""PostgreSQL's own epoch (2000-01-01 UTC) in Unix epoch microseconds."""


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """One batch's winning rows (one per pair), made ready for `write_prepared` in advance."""

    size: int
    """The rows of the batch the winners were chosen from."""
    user_names: list[str]
    """The batch's distinct users in code-point order (the order they are locked in)."""
    item_names: list[str]
    """The batch's distinct items in code-point order."""
    users: list[str]
    """Each row's user."""
    items: list[str]
    """Each row's item."""
    ratings: list[float | None]
    event_us: list[int]
    """Each row's event time in microseconds since the Unix epoch."""

    def __len__(self) -> int:
        return self.size


def prepare_rows(
    size: int,
    users: list[str],
    items: list[str],
    ratings: list[float | None],
    event_us: list[int],
) -> PreparedRows:
    """The client's share of `write_prepared` for rows with one row per pair (any thread);
    `size`: the rows of the batch they won in."""
    return PreparedRows(
        size, sorted(set(users)), sorted(set(items)), users, items, ratings, event_us
    )


# Users and items found or created in one statement. New users are inserted and existing ones
# locked in code-point order, as every writer locks its users. A user or item that another
# transaction creates or deletes meanwhile is missing from the result: `_resolve` asks again.
_RESOLVE = """
    WITH user_names AS (
        SELECT name FROM unnest(string_to_array(%(users)s, chr(31))) AS name
    ), item_names AS (
        SELECT name FROM unnest(string_to_array(%(items)s, chr(31))) AS name
    ), new_users AS (
        INSERT INTO users (external_id, created_at, history_changed_at, history_version)
        SELECT name, %(now)s, %(now)s, 0 FROM user_names
        WHERE NOT EXISTS (SELECT FROM users AS u WHERE u.external_id = name)
        ORDER BY name COLLATE "C"
        ON CONFLICT (external_id) DO NOTHING
        RETURNING external_id, id
    ), old_users AS (
        SELECT u.external_id, u.id FROM user_names JOIN users AS u ON u.external_id = name
        ORDER BY u.external_id COLLATE "C" FOR NO KEY UPDATE OF u
    ), new_items AS (
        INSERT INTO items (external_id, tags, attributes, created_at, updated_at)
        SELECT name, '[]'::json, '{}'::json, %(now)s, %(now)s FROM item_names
        WHERE NOT EXISTS (SELECT FROM items AS i WHERE i.external_id = name)
        ON CONFLICT (external_id) DO NOTHING
        RETURNING external_id, id
    ), old_items AS (
        SELECT i.external_id, i.id FROM item_names JOIN items AS i ON i.external_id = name
    )
    SELECT true, external_id, id FROM new_users
    UNION ALL SELECT true, external_id, id FROM old_users
    UNION ALL SELECT false, external_id, id FROM new_items
    UNION ALL SELECT false, external_id, id FROM old_items
"""

_ID_SEPARATOR = "\x1f"
"""Joins external ids into one text parameter, split again by the server (`chr(31)`)."""


def _resolve_sent(cursor: Any, user_names: list[str], item_names: list[str], now: datetime) -> None:
    """Send `_RESOLVE` for these names (its rows are read by `_resolved`)."""
    parameters = {
        "users": _ID_SEPARATOR.join(user_names),
        "items": _ID_SEPARATOR.join(item_names),
        "now": now,
    }
    cursor.execute(_RESOLVE, parameters)


def _resolved(
    cursor: Any, user_names: list[str], item_names: list[str], now: datetime
) -> tuple[dict[str, int], dict[str, int], bool]:
    """The ids `_RESOLVE` sent on `cursor` found, asked again for any name still missing;
    and whether it had to ask again."""
    user_ids: dict[str, int] = {}
    item_ids: dict[str, int] = {}
    again = False
    while True:
        for is_user, name, ident in cursor.fetchall():
            (user_ids if is_user else item_ids)[name] = ident
        user_names = [name for name in user_names if name not in user_ids]
        item_names = [name for name in item_names if name not in item_ids]
        if not user_names and not item_names:
            return user_ids, item_ids, again
        _resolve_sent(cursor, user_names, item_names, now)
        again = True


_COPY_RATINGS = (
    "COPY ratings (user_id, item_id, rating, event_at, stored_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# A row: 5 fields, each its length and value (integer, integer, float8, timestamptz twice as
# microseconds since PostgreSQL's epoch), or a null rating (length -1, no value).
_ROW = struct.Struct(">hiiiiidiqiq")
_ROW_NULL_RATING = struct.Struct(">hiiiiiiqiq")


def _copy_data(
    user_ids: list[int],
    item_ids: list[int],
    ratings: list[float | None],
    event_us: list[int],
    now: datetime,
) -> bytes:
    """Rows (parallel columns, event times in Unix epoch microseconds) as COPY BINARY data."""
    event = map(sub, event_us, repeat(_PG_EPOCH_US))
    stored = unix_us(now) - _PG_EPOCH_US
    if None not in ratings:
        fields = zip(
            repeat(5), repeat(4), user_ids, repeat(4), item_ids, repeat(8), ratings,
            repeat(8), event, repeat(8), repeat(stored),
        )  # fmt: skip
        body = b"".join(starmap(_ROW.pack, fields))
    else:
        full, null = _ROW.pack, _ROW_NULL_RATING.pack
        body = b"".join(
            [
                full(5, 4, user, 4, item, 8, rating, 8, time, 8, stored)
                if rating is not None
                else null(5, 4, user, 4, item, -1, 8, time, 8, stored)
                for user, item, rating, time in zip(user_ids, item_ids, ratings, event, strict=True)
            ]
        )
    return _COPY_HEADER + body + _COPY_TRAILER


def _copy(cursor: Any, data: bytes) -> None:
    """COPY `_copy_data`'s rows straight into `ratings`."""
    with cursor.copy(_COPY_RATINGS) as copy:
        copy.write(data)


# One index probe per pair (LATERAL ... LIMIT 1): a plain join lets the planner hash the whole
# ratings table instead.
_EXISTING = """
    SELECT p.user_id, p.item_id
    FROM unnest(%s::integer[], %s::integer[]) AS p(user_id, item_id)
    CROSS JOIN LATERAL (
        SELECT FROM ratings AS r WHERE r.user_id = p.user_id AND r.item_id = p.item_id LIMIT 1
    ) AS hit
"""

# Stored pairs: the guarded upsert (a newer or equal time replaces), inserting a pair again
# should it have gone; the touch is done once for every changed user afterwards.
_UPSERT_STORED = f"""
    INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
    {BATCH_ROWS}
    ON CONFLICT (user_id, item_id) DO UPDATE
    SET rating = excluded.rating, event_at = excluded.event_at, stored_at = excluded.stored_at
    WHERE excluded.event_at >= ratings.event_at
    RETURNING user_id, (xmax = 0) AS inserted
"""


def write_prepared(cursor: Any, rows: PreparedRows, now: datetime) -> tuple[int, int]:
    """Upsert `prepare_rows`' rows: their users found or created and locked, their items found
    or created, the users whose ratings changed touched; (rows inserted, rows updated).

    A bulk load mostly brings new pairs, so every row is first COPYed as one, which spares a
    lookup of every pair; a stored pair makes that COPY fail, undone to a savepoint.
    """
    connection = cursor.connection
    with connection.pipeline():  # one round trip: the statement, then the savepoint
        _resolve_sent(cursor, rows.user_names, rows.item_names, now)
        connection.execute("SAVEPOINT prepared_copy")
    user_ids, item_ids, again = _resolved(cursor, rows.user_names, rows.item_names, now)
    if again:  # what was asked again belongs before the savepoint
        cursor.execute("RELEASE SAVEPOINT prepared_copy")
        cursor.execute("SAVEPOINT prepared_copy")
    uids = list(map(user_ids.__getitem__, rows.users))
    iids = list(map(item_ids.__getitem__, rows.items))
    try:
        _copy(cursor, _copy_data(uids, iids, rows.ratings, rows.event_us, now))
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT prepared_copy")
        return _write_with_stored(cursor, uids, iids, rows, now)
    with connection.pipeline():  # each user has a new rating
        connection.execute("RELEASE SAVEPOINT prepared_copy")
        touch_users(cursor, sorted(user_ids.values()), now)
    return len(uids), 0


def _write_with_stored(
    cursor: Any, uids: list[int], iids: list[int], rows: PreparedRows, now: datetime
) -> tuple[int, int]:
    """`write_prepared` for rows some of whose pairs are stored: new pairs COPYed, stored ones
    upserted with the guard."""
    stored = set(cursor.execute(_EXISTING, (array_literal(uids), array_literal(iids))))
    pairs = list(zip(uids, iids, strict=True))
    old = [k for k, pair in enumerate(pairs) if pair in stored]
    new = [k for k, pair in enumerate(pairs) if pair not in stored]
    changed = {uids[k] for k in new}
    inserted, updated = len(new), 0
    if new:
        data = _copy_data(
            [uids[k] for k in new],
            [iids[k] for k in new],
            [rows.ratings[k] for k in new],
            [rows.event_us[k] for k in new],
            now,
        )
        _copy(cursor, data)
    if old:
        parameters = {
            "now": now,
            "users": array_literal(uids[k] for k in old),
            "items": array_literal(iids[k] for k in old),
            "ratings": array_literal(rows.ratings[k] for k in old),
            "times": array_literal(rows.event_us[k] for k in old),
        }
        for user_id, was_inserted in cursor.execute(_UPSERT_STORED, parameters).fetchall():
            changed.add(user_id)
            inserted += int(was_inserted)
            updated += int(not was_inserted)
    if changed:
        touch_users(cursor, sorted(changed), now)
    return inserted, updated


def unix_us(time: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch (exactly)."""
    delta = time - _UNIX_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
