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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from service.db.postgres_upsert import (
    BATCH_ROWS,
    array_literal,
    resolve_items,
    resolve_users,
    touch_users,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """One batch's winning rows (one per pair), made ready for `write_prepared` in advance."""

    user_names: list[str]
    """The batch's distinct users in code-point order (the order they are locked in)."""
    item_names: list[str]
    """The batch's distinct items."""
    users: list[str]
    """Each row's user."""
    items: list[str]
    """Each row's item."""
    ratings: list[float | None]
    event_times: list[datetime]
    copy_tails: list[str]
    """Each row's rating and event time as COPY text fields."""


def prepare_rows(
    users: list[str], items: list[str], ratings: list[float | None], event_times: list[datetime]
) -> PreparedRows:
    """The client's share of `write_prepared` for rows with one row per pair (any thread)."""
    rating_texts = ["\\N" if value is None else repr(value) for value in ratings]
    tails = list(
        map("\t".join, zip(rating_texts, map(datetime.isoformat, event_times), strict=True))
    )
    return PreparedRows(
        sorted(set(users)), sorted(set(items)), users, items, ratings, event_times, tails
    )


# One index probe per pair (LATERAL ... LIMIT 1): a plain join lets the planner hash the whole
# ratings table instead.
_EXISTING = """
    SELECT p.user_id, p.item_id
    FROM unnest(%s::integer[], %s::integer[]) AS p(user_id, item_id)
    CROSS JOIN LATERAL (
        SELECT FROM ratings AS r WHERE r.user_id = p.user_id AND r.item_id = p.item_id LIMIT 1
    ) AS hit
"""

_COPY_RATINGS = "COPY ratings (user_id, item_id, rating, event_at, stored_at) FROM STDIN"

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


def _copy(cursor: Any, users: list[str], items: list[str], tails: list[str], now: datetime) -> None:
    """COPY rows (user id, item id and `prepare_rows`' tail as text) straight into `ratings`."""
    end = f"\t{now.isoformat()}\n"  # every row's stored-at time, and the line's end
    text = end.join(map("\t".join, zip(users, items, tails, strict=True))) + end
    with cursor.copy(_COPY_RATINGS) as copy:
        copy.write(text.encode())


def _copy_all_new(
    cursor: Any, users: list[str], items: list[str], tails: list[str], now: datetime
) -> bool:
    """COPY every row as a new pair; False (and nothing written) if any pair is stored already.

    A bulk load mostly brings new pairs: trying that first spares a lookup of every pair. A
    stored pair makes the COPY fail on its first such row, undone to the savepoint.
    """
    cursor.execute("SAVEPOINT prepared_copy")
    try:
        _copy(cursor, users, items, tails, now)
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT prepared_copy")
        return False
    cursor.execute("RELEASE SAVEPOINT prepared_copy")
    return True


def write_prepared(cursor: Any, rows: PreparedRows, now: datetime) -> tuple[int, int]:
    """Upsert `prepare_rows`' rows: their users found or created and locked, their items found
    or created, the users whose ratings changed touched; (rows inserted, rows updated)."""
    user_ids = resolve_users(cursor, rows.user_names, now)
    item_ids = resolve_items(cursor, rows.item_names, now)
    user_texts = {name: str(ident) for name, ident in user_ids.items()}
    item_texts = {name: str(ident) for name, ident in item_ids.items()}
    users = [user_texts[name] for name in rows.users]
    items = [item_texts[name] for name in rows.items]
    if _copy_all_new(cursor, users, items, rows.copy_tails, now):
        touch_users(cursor, sorted(user_ids.values()), now)  # each has a new rating
        return len(users), 0
    uids = [user_ids[name] for name in rows.users]
    iids = [item_ids[name] for name in rows.items]
    stored = set(cursor.execute(_EXISTING, (array_literal(uids), array_literal(iids))))
    old = [k for k, pair in enumerate(zip(uids, iids, strict=True)) if pair in stored]
    new = [k for k, pair in enumerate(zip(uids, iids, strict=True)) if pair not in stored]
    changed = {uids[k] for k in new}
    inserted, updated = len(new), 0
    if new:
        tails = rows.copy_tails
        _copy(
            cursor, [users[k] for k in new], [items[k] for k in new], [tails[k] for k in new], now
        )
    if old:
        parameters = {
            "now": now,
            "users": array_literal(uids[k] for k in old),
            "items": array_literal(iids[k] for k in old),
            "ratings": array_literal(rows.ratings[k] for k in old),
            "times": array_literal((rows.event_times[k] - _EPOCH) // _MICROSECOND for k in old),
        }
        for user_id, was_inserted in cursor.execute(_UPSERT_STORED, parameters).fetchall():
            changed.add(user_id)
            inserted += int(was_inserted)
            updated += int(not was_inserted)
    if changed:
        touch_users(cursor, sorted(changed), now)
    return inserted, updated
