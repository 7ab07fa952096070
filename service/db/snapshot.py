"""A consistent snapshot of every rating, streamed into arrays for training (no ORM objects).

The ratings, the id vocabularies and the aggregate times are read in one transaction that sees
one state of the database: REPEATABLE READ on PostgreSQL, and SQLite's WAL read transaction.
Ratings come in chunks of plain tuples from a single streamed SELECT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, func, select

from service.db.feature_snapshot import SnapshotFeatures, read_snapshot_features
from service.db.tables import items, ratings, users

CHUNK_ROWS = 50_000
"""Ratings fetched per round trip while streaming."""


@dataclass(frozen=True)
class RatingsSnapshot:
    """Every rating as arrays over dense positions; `values` is NaN where the rating is null."""

    users: npt.NDArray[np.int64]
    """Position of each rating's user in `user_ids`."""
    items: npt.NDArray[np.int64]
    """Position of each rating's item in `item_ids`."""
    values: npt.NDArray[np.float32]
    user_ids: list[str]
    item_ids: list[str]
    history_versions: dict[str, int]
    """Each user's history version at the snapshot, by external id."""
    taken_at: datetime
    newest_rating_at: datetime | None
    stored_until: datetime | None
    features: SnapshotFeatures | None = None
    """Users' and items' side information, when asked for (`with_features`)."""

    def __len__(self) -> int:
        return int(self.users.shape[0])


def _positions(ids: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Positions of database ids within the sorted id array `keys` (every id is present)."""
    return np.searchsorted(keys, ids).astype(np.int64)


def read_ratings_snapshot(
    engine: Engine,
    *,
    chunk_rows: int = CHUNK_ROWS,
    on_chunk: Callable[[int], None] | None = None,
    with_features: bool = False,
) -> RatingsSnapshot:
    """Read every rating with its user and item ids in one consistent read transaction.

    `on_chunk` is called with the running row count after each chunk (e.g. to heartbeat);
    `with_features` also reads tags and attributes (`feature_snapshot`) in the same transaction.
    """
    connection = engine.connect()
    if engine.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    with connection, connection.begin():
        taken_at = datetime.now(UTC)
        newest, stored_until = connection.execute(
            select(func.max(ratings.c.event_at), func.max(ratings.c.stored_at))
        ).one()
        user_rows = connection.execute(
            select(users.c.id, users.c.external_id, users.c.history_version).order_by(users.c.id)
        ).all()
        item_rows = connection.execute(
            select(items.c.id, items.c.external_id).order_by(items.c.id)
        ).all()
        user_keys = np.fromiter((r[0] for r in user_rows), dtype=np.int64, count=len(user_rows))
        item_keys = np.fromiter((r[0] for r in item_rows), dtype=np.int64, count=len(item_rows))
        features = read_snapshot_features(connection) if with_features else None

        user_parts: list[npt.NDArray[np.int64]] = []
        item_parts: list[npt.NDArray[np.int64]] = []
        value_parts: list[npt.NDArray[np.float32]] = []
        total = 0
        result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(
            select(ratings.c.user_id, ratings.c.item_id, ratings.c.rating)
        )
        for chunk in result.partitions(chunk_rows):
            n = len(chunk)
            user_parts.append(np.fromiter((r[0] for r in chunk), dtype=np.int64, count=n))
            item_parts.append(np.fromiter((r[1] for r in chunk), dtype=np.int64, count=n))
            value_parts.append(
                np.fromiter(
                    (np.nan if r[2] is None else r[2] for r in chunk), dtype=np.float32, count=n
                )
            )
            total += n
            if on_chunk is not None:
                on_chunk(total)

    def joined(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    values = np.concatenate(value_parts) if value_parts else np.zeros(0, dtype=np.float32)
    return RatingsSnapshot(
        users=_positions(joined(user_parts), user_keys),
        items=_positions(joined(item_parts), item_keys),
        values=values,
        user_ids=[str(r[1]) for r in user_rows],
        item_ids=[str(r[1]) for r in item_rows],
        history_versions={str(r[1]): int(r[2]) for r in user_rows},
        taken_at=taken_at,
        newest_rating_at=newest,
        stored_until=stored_until,
        features=features,
    )
