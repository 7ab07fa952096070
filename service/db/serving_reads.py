"""Reads of the serving path besides a profile: users' history markers, every user's history at
once (what a model version's snapshot state is built from when it is loaded), and the read
engine and readers of the request path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from service.db.profiles import (
    AsyncProfileReader,
    HeldConnections,
    ProfileReader,
    RowFetch,
    UserProfile,
    fetch_rows,
)
from service.db.session import create_db_engine, normalize_database_url

MARKER_SQL = "SELECT external_id, history_version FROM users WHERE external_id {condition}"
"""One indexed row per user (the unique index on `users.external_id`): the history marker."""

HISTORIES_SQL = (
    "SELECT users.id, users.external_id, users.history_version, ratings.item_id, ratings.rating "
    "FROM users JOIN ratings ON ratings.user_id = users.id "
    "WHERE users.id > {low} AND users.id <= {high} ORDER BY users.id"
)
"""The ratings of a range of users with their markers, grouped by user: one statement, so each
user's ratings and marker are of one state of the database."""

USERS_PER_READ = 5_000
"""Users whose ratings one statement of `read_histories` reads (bounds the driver's buffer)."""


class MarkerReader:
    """Reads history markers with one prepared statement on a pooled DBAPI connection."""

    def __init__(self, engine: Engine, fetch: RowFetch | None = None) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._fetch: RowFetch = fetch or (lambda sql, params: fetch_rows(engine, sql, params))

    def read(self, external_ids: Sequence[str]) -> dict[str, int]:
        """The history version of each given user that exists, in one query."""
        users = list(dict.fromkeys(external_ids))
        if not users:
            return {}
        params: tuple[Any, ...]
        if self.sqlite:
            markers = "= ?" if len(users) == 1 else f"IN ({', '.join('?' * len(users))})"
            sql, params = MARKER_SQL.format(condition=markers), tuple(users)
        else:
            sql, params = MARKER_SQL.format(condition="= ANY(%s)"), (users,)
        return {str(user): int(version) for user, version in self._fetch(sql, params)}


class AsyncMarkerReader(AsyncProfileReader):
    """Reads profiles and history markers from PostgreSQL on the event loop (psycopg's async
    API), on the same few connections."""

    def __init__(self, database_url: str, connections: int = 2) -> None:
        super().__init__(database_url, connections)
        self._marker_sql = MARKER_SQL.format(condition="= ANY(%s)")

    async def markers(self, external_ids: Sequence[str]) -> dict[str, int]:
        """The history version of each given user that exists, in one query."""
        users = list(dict.fromkeys(external_ids))
        if not users:
            return {}
        rows = await self.fetch(self._marker_sql, (users,))
        return {str(user): int(version) for user, version in rows}


@dataclass(frozen=True)
class Histories:
    """Every user's ratings, grouped by user: user i's are rows offsets[i]:offsets[i+1]."""

    users: list[str]
    markers: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int32]
    """Database item ids."""
    ratings: npt.NDArray[np.float32]
    """NaN where a rating is null (implicit)."""


def read_histories(engine: Engine) -> Histories:
    """Every user's ratings and history marker, read a range of users at a time."""
    users: list[str] = []
    markers: list[int] = []
    starts: list[int] = []
    item_parts: list[npt.NDArray[np.int32]] = []
    rating_parts: list[npt.NDArray[np.float32]] = []
    total = 0
    marker = "?" if engine.dialect.name == "sqlite" else "%s"
    sql = HISTORIES_SQL.format(low=marker, high=marker)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT max(id) FROM users")
            found = cursor.fetchone()
            largest = int(found[0] or 0) if found is not None else 0
            for low in range(0, largest, USERS_PER_READ):
                cursor.execute(sql, (low, low + USERS_PER_READ))
                rows: Sequence[Any] = cursor.fetchall()
                last = None
                for position, row in enumerate(rows):
                    if row[0] != last:
                        last = row[0]
                        users.append(str(row[1]))
                        markers.append(int(row[2]))
                        starts.append(total + position)
                item_parts.append(
                    np.fromiter((r[3] for r in rows), dtype=np.int32, count=len(rows))
                )
                rating_parts.append(
                    np.fromiter(
                        (np.nan if r[4] is None else r[4] for r in rows),
                        dtype=np.float32,
                        count=len(rows),
                    )
                )
                total += len(rows)
        finally:
            cursor.close()
    finally:
        connection.close()
    starts.append(total)
    return Histories(
        users=users,
        markers=np.asarray(markers, dtype=np.int64),
        offsets=np.asarray(starts, dtype=np.int64),
        item_ids=np.concatenate(item_parts) if item_parts else np.zeros(0, dtype=np.int32),
        ratings=np.concatenate(rating_parts) if rating_parts else np.zeros(0, dtype=np.float32),
    )


POOL_SIZE = 16
"""Connections the serving engine keeps open (opened on demand): enough for SQLite's serving
reads, the routes that read through the thread pool, and the catalog refresh, without closing
and reopening overflow connections under load."""

POOL_OVERFLOW = 32
"""Extra connections it may open under a burst of concurrent requests."""

SQLITE_MMAP_BYTES = 1 << 30
"""SQLite serving reads map up to this much of the database file (address space, not memory):
a read then copies no pages through read calls."""


def create_serving_engine(database_url: str) -> Engine:
    """A read engine for the request path: no pre-ping, and on PostgreSQL autocommit reads.

    Both save round trips: each serving read then costs exactly its one query (no ping, no
    BEGIN, no ROLLBACK). A dropped connection fails one request with 503 and is replaced.
    """
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    if make_url(normalize_database_url(database_url)).get_backend_name() != "sqlite":
        options.update(pool_pre_ping=False, isolation_level="AUTOCOMMIT")
    else:
        options.update(sqlite_mmap_bytes=SQLITE_MMAP_BYTES)
    return create_db_engine(database_url, **options)


MarkerRead = Callable[[Sequence[str]], Awaitable[dict[str, int]]]
ProfileRead = Callable[[Sequence[str]], Awaitable[dict[str, UserProfile]]]


@asynccontextmanager
async def serving_readers(
    database_url: str, engine: Engine
) -> AsyncIterator[tuple[MarkerRead, ProfileRead]]:
    """The marker and profile reads of the request path, awaited on the event loop.

    SQLite's local reads run on the loop itself (they cost less than a thread hop, and their
    row-by-row GIL releases would each wait for the busy loop in a thread), on one held
    connection; PostgreSQL's go through psycopg's async API, so the loop waits on the socket
    and no thread is involved.
    """
    if engine.dialect.name == "sqlite":
        held = HeldConnections(engine)
        marker_reader = MarkerReader(engine, held.fetch)
        profile_reader = ProfileReader(engine, held.fetch)

        async def markers(users: Sequence[str]) -> dict[str, int]:
            return marker_reader.read(users)

        async def profiles(users: Sequence[str]) -> dict[str, UserProfile]:
            return profile_reader.read(users)

        try:
            yield markers, profiles
        finally:
            held.close()
        return
    reader = AsyncMarkerReader(database_url)
    try:
        yield reader.markers, reader.read
    finally:
        await reader.close()
