"""A group of small rating batches written and committed on PostgreSQL in one round trip.

`upsert.upsert_batches` sends about ten statements per group, each a network round trip (and,
in an API process, a wait for the interpreter lock on its way back). Here one session-local
PL/pgSQL function (`pg_temp`, created once per connection) runs the same steps on the server,
called as a transaction of its own: one statement, one round trip, committed when it answers.

The outcome is `upsert_batches`' exactly: the batches as if upserted one after another,
users created and locked in code-point order, unknown items created, histories touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.pq import TransactionStatus

from service.db.postgres_upsert import COPY_MIN_ROWS
from service.db.upsert import RatingBatch, UpsertCounts, winning_rows

MAX_GROUP_ROWS = COPY_MIN_ROWS - 1
"""Most rows a group written here holds; larger writes take `upsert_batches`, whose COPY path
suits them."""

LOCK_ATTEMPTS = 100
"""Rounds of create-then-lock the function tries while users are deleted under it."""

_SEPARATOR = "\x1f"
"""Joins external ids into one text parameter, split again by the server (`chr(31)`): no
valid id holds a control character."""

# `p_user_names`, `p_item_names`: distinct ids, code-point order, joined by chr(31); each row
# points into them (1-based). Users are locked FOR NO KEY UPDATE in that order, as every
# rating writer does, so that writers of overlapping users wait instead of deadlocking, and
# a locked user cannot be deleted (`DELETE /users/{user}` locks it FOR UPDATE) before this
# transaction ends: `ratings` has no foreign keys (migration 0006). Each statement of the
# function reads a fresh snapshot, so the stored times are read under those locks. Existence
# is checked before the inserts so that known ids do not use up sequence values. Lookups are
# scalar subqueries (one index probe per id) and id lists `= ANY`: as joins, the planner took
# hash joins over whole-table scans while the tables' statistics were young. Without seq scans
# the id lists also stay on their index while `users` is small but full of dead versions (each
# group touches its users); generic plans are made once per connection instead of per call.
_CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pg_temp.mfserve_write_group(
    p_user_names text, p_item_names text,
    p_row_users integer[], p_row_items integer[], p_ratings double precision[],
    p_event_us bigint[], p_requests integer[], p_stored_us bigint[], p_now timestamptz
) RETURNS TABLE (request_index integer, inserted_rows bigint, updated_rows bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $function$
DECLARE
    user_names text[] := string_to_array(p_user_names, chr(31));
    item_names text[] := string_to_array(p_item_names, chr(31));
    user_ids integer[];
    item_ids integer[];
    locked bigint;
    attempts integer := 0;
BEGIN
    LOOP
        INSERT INTO users (external_id, created_at, history_changed_at, history_version)
        SELECT name, p_now, p_now, 0 FROM unnest(user_names) AS name
        WHERE (SELECT known.id FROM users AS known WHERE known.external_id = name) IS NULL
        ON CONFLICT (external_id) DO NOTHING;
        user_ids := ARRAY(
            SELECT (SELECT u.id FROM users AS u WHERE u.external_id = wanted.name)
            FROM unnest(user_names) WITH ORDINALITY AS wanted(name, ord) ORDER BY wanted.ord
        );
        PERFORM FROM users AS u WHERE u.id = ANY (user_ids)
        ORDER BY u.external_id COLLATE "C" FOR NO KEY UPDATE;
        GET DIAGNOSTICS locked = ROW_COUNT;
        EXIT WHEN locked = cardinality(user_names);
        attempts := attempts + 1;  -- a user was deleted between its lookup and its lock
        IF attempts >= {LOCK_ATTEMPTS} THEN
            RAISE EXCEPTION 'mfserve: users deleted faster than they could be locked';
        END IF;
    END LOOP;

    INSERT INTO items (external_id, tags, attributes, created_at, updated_at)
    SELECT name, '[]'::json, '{{}}'::json, p_now, p_now FROM unnest(item_names) AS name
    WHERE (SELECT known.id FROM items AS known WHERE known.external_id = name) IS NULL
    ON CONFLICT (external_id) DO NOTHING;
    item_ids := ARRAY(
        SELECT (SELECT i.id FROM items AS i WHERE i.external_id = wanted.name)
        FROM unnest(item_names) WITH ORDINALITY AS wanted(name, ord) ORDER BY wanted.ord
    );
    IF array_position(item_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'mfserve: an item vanished while its ratings were written';
    END IF;

    -- A row replaces what its pair holds (stored, or an earlier row of the group) when its
    -- event time is newer or equal; the pair's last such row is the one written.
    RETURN QUERY
    WITH arrived AS (
        SELECT r.ord, r.request, user_ids[r.user_index] AS user_id,
               item_ids[r.item_index] AS item_id, r.rating,
               TIMESTAMPTZ 'epoch' + r.event_us * INTERVAL '1 microsecond' AS event_at
        FROM unnest(p_row_users, p_row_items, p_ratings, p_event_us, p_requests)
            WITH ORDINALITY AS r(user_index, item_index, rating, event_us, request, ord)
    ),
    looked_up AS MATERIALIZED (
        SELECT a.*, (
            SELECT s.event_at FROM ratings AS s
            WHERE s.user_id = a.user_id AND s.item_id = a.item_id
        ) AS stored_event_at
        FROM arrived AS a
    ),
    judged AS (
        SELECT a.*, CASE
            WHEN a.stored_event_at IS NULL AND count(*) OVER earlier = 0 THEN 1
            WHEN a.event_at >= greatest(a.stored_event_at, max(a.event_at) OVER earlier) THEN 2
            ELSE 0 END AS outcome
        FROM looked_up AS a
        WINDOW earlier AS (
            PARTITION BY a.user_id, a.item_id ORDER BY a.ord
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        )
    ),
    written AS (
        INSERT INTO ratings (user_id, item_id, rating, event_at, stored_at)
        SELECT DISTINCT ON (j.user_id, j.item_id) j.user_id, j.item_id, j.rating, j.event_at,
               TIMESTAMPTZ 'epoch' + p_stored_us[j.request] * INTERVAL '1 microsecond'
        FROM judged AS j WHERE j.outcome > 0
        ORDER BY j.user_id, j.item_id, j.ord DESC
        ON CONFLICT (user_id, item_id) DO UPDATE
        SET rating = excluded.rating, event_at = excluded.event_at,
            stored_at = excluded.stored_at
        WHERE excluded.event_at >= ratings.event_at
        RETURNING ratings.user_id
    ),
    touched AS (
        UPDATE users SET history_version = history_version + 1, history_changed_at = p_now
        WHERE users.id = ANY (ARRAY(SELECT w.user_id FROM written AS w))
    )
    SELECT j.request, count(*) FILTER (WHERE j.outcome = 1),
           count(*) FILTER (WHERE j.outcome = 2)
    FROM judged AS j GROUP BY j.request;
END
$function$
"""

_CALL = """
    SELECT request_index, inserted_rows, updated_rows FROM pg_temp.mfserve_write_group(
        %s::text, %s::text, %s::integer[], %s::integer[], %s::double precision[],
        %s::bigint[], %s::integer[], %s::bigint[], %s::timestamptz
    )
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class GroupWriter:
    """Writes and commits groups of batches on one psycopg connection, one round trip each.

    The connection must be idle (no transaction open) between calls; it is left idle.
    """

    def __init__(self, connection: Any):
        self._connection = connection
        if connection.info.transaction_status != TransactionStatus.IDLE:  # a pool ping's
            connection.rollback()
        connection.execute(_CREATE_FUNCTION)
        connection.commit()

    def write(self, batches: Sequence[RatingBatch], nows: Sequence[datetime]) -> list[UpsertCounts]:
        """Upsert the batches as if one after another (`nows[k]`: when batch k arrived), commit.

        Returns each batch's counts once the commit succeeded; raises (nothing stored) otherwise.
        """
        params, sizes = _call_parameters(batches, nows)
        connection = self._connection
        # In autocommit mode the call is a transaction of its own, which the server commits
        # before it answers: one round trip, and nothing stored should the call fail.
        connection.autocommit = True
        try:
            result = connection.execute(_CALL, params).fetchall()
        finally:
            connection.autocommit = False
        inserted = [0] * len(batches)
        updated = [0] * len(batches)
        for request, request_inserted, request_updated in result:
            inserted[request - 1] = request_inserted
            updated[request - 1] = request_updated
        return [
            UpsertCounts(inserted[k], updated[k], sizes[k] - inserted[k] - updated[k])
            for k in range(len(batches))
        ]


def _call_parameters(
    batches: Sequence[RatingBatch], nows: Sequence[datetime]
) -> tuple[list[object], list[int]]:
    """The function's arguments for a group, and each batch's size."""
    rows = [
        (index, batch, i)
        for index, batch in enumerate(batches, start=1)
        for i in winning_rows(batch)
    ]
    user_names = sorted({batch.users[i] for _, batch, i in rows})
    item_names = sorted({batch.items[i] for _, batch, i in rows})
    user_index = {name: k for k, name in enumerate(user_names, start=1)}
    item_index = {name: k for k, name in enumerate(item_names, start=1)}
    params: list[object] = [
        _SEPARATOR.join(user_names),
        _SEPARATOR.join(item_names),
        _array([user_index[batch.users[i]] for _, batch, i in rows]),
        _array([item_index[batch.items[i]] for _, batch, i in rows]),
        _array([batch.ratings[i] for _, batch, i in rows]),
        _array([(batch.event_times[i] - _EPOCH) // _MICROSECOND for _, batch, i in rows]),
        _array([index for index, _, _ in rows]),
        _array([(now - _EPOCH) // _MICROSECOND for now in nows]),
        max(nows),
    ]
    return params, [len(batch) for batch in batches]


def _array(values: Sequence[object]) -> str:
    """A PostgreSQL array literal of numbers and nulls (far cheaper than adapting a list)."""
    return "{" + ",".join("NULL" if value is None else repr(value) for value in values) + "}"
