"""Reads of the serving path: a user's history marker and rated items in one indexed query,
and the item catalog (database ids, external ids, tags) that the serving cache is built from.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from sqlalchemy import Connection, Engine, func, select

from service.db.notifications import libpq_dsn
from service.db.tables import items


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What serving needs of one user: the history version and their rated items.

    `item_ids` are database item ids; `ratings` is NaN where a rating is null (implicit).
    """

    history_version: int
    item_ids: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float32]


PROFILE_SQL = (
    "SELECT users.external_id, users.history_version, ratings.item_id, ratings.rating "
    "FROM users LEFT OUTER JOIN ratings ON ratings.user_id = users.id "
    "WHERE users.external_id {condition}"
)
"""The serving query: the unique index on `users.external_id`, then the (user_id, item_id) key
of `ratings`; a user without ratings comes back as one row with a null item."""


class ProfileReader:
    """Reads user profiles with one prepared SQL statement on a pooled DBAPI connection.

    The serving path skips SQLAlchemy's statement compilation and result machinery: the SQL is
    fixed, and it runs in autocommit (PostgreSQL) or as SQLite's implicit read transaction, so a
    call costs exactly one round trip.
    """

    def __init__(self, engine: Engine, fetch: RowFetch | None = None) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._fetch: RowFetch = fetch or (lambda sql, params: fetch_rows(engine, sql, params))
        marker = "?" if self.sqlite else "%s"
        self._one = PROFILE_SQL.format(condition=f"= {marker}")
        self._many = PROFILE_SQL.format(condition="= ANY(%s)")

    def _statement(self, users: list[str]) -> tuple[str, tuple[Any, ...]]:
        if len(users) == 1:
            return self._one, (users[0],)
        if self.sqlite:
            markers = ", ".join("?" * len(users))
            return PROFILE_SQL.format(condition=f"IN ({markers})"), tuple(users)
        return self._many, (users,)

    def read(self, external_ids: Sequence[str]) -> dict[str, UserProfile]:
        """Profiles of the given users (absent ones are left out), read in one query."""
        users = list(dict.fromkeys(external_ids))
        if not users:
            return {}
        sql, params = self._statement(users)
        return _group(self._fetch(sql, params))


class AsyncProfileReader:
    """Reads user profiles from PostgreSQL on the event loop, through psycopg's async API.

    The loop waits on the socket itself, so a read takes no thread: a thread that waits on the
    network must take the GIL back from the busy loop after every step of psycopg's protocol,
    and each such step waited up to the interpreter's switch interval. Keeps up to
    `connections` open connections (autocommit: one round trip per read); a connection that
    fails or whose read is cancelled is closed, not reused.
    """

    def __init__(self, database_url: str, connections: int = 2) -> None:
        self._dsn = libpq_dsn(database_url)
        self._sql = PROFILE_SQL.format(condition="= ANY(%s)")
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = connections
        self._free: asyncio.Semaphore | None = None

    async def read(self, external_ids: Sequence[str]) -> dict[str, UserProfile]:
        """Profiles of the given users (absent ones are left out), read in one query."""
        users = list(dict.fromkeys(external_ids))
        if not users:
            return {}
        return _group(await self.fetch(self._sql, (users,)))

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of one query, on one of the reader's connections."""
        if self._free is None:
            self._free = asyncio.Semaphore(self._slots)
        async with self._free:
            connection = self._idle.pop() if self._idle else await self._connect()
            try:
                cursor = await connection.execute(sql, params)
                rows = await cursor.fetchall()
            except BaseException:
                await connection.close()
                raise
            self._idle.append(connection)
        return rows

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=5)

    async def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()


RowFetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one statement and returns its rows."""


class HeldConnections:
    """One pooled DBAPI connection (and cursor) held per thread for the serving reads, given
    back by `close`: a read then costs its statement, not a pool checkout and return. Each
    statement runs on its own (SQLite's implicit read transaction), so it sees every commit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: dict[int, tuple[Any, Any]] = {}

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of one statement, on this thread's held connection."""
        thread = threading.get_ident()
        held = self._held.get(thread)
        if held is None:
            connection = self.engine.raw_connection()
            held = self._held[thread] = (connection, connection.cursor())
        try:
            held[1].execute(sql, params)
            return [tuple(row) for row in held[1].fetchall()]
        except Exception:
            self._release(thread)  # a broken connection is not kept
            raise

    def _release(self, thread: int) -> None:
        connection, cursor = self._held.pop(thread)
        try:
            cursor.close()
        finally:
            connection.close()  # back to the pool

    def close(self) -> None:
        """Give every held connection back to the pool."""
        for thread in list(self._held):
            self._release(thread)


def fetch_rows(engine: Engine, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Every row of one statement, run on a pooled DBAPI connection (no SQLAlchemy layers)."""
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
    finally:
        connection.close()  # back to the pool


def _group(rows: Sequence[Sequence[Any]]) -> dict[str, UserProfile]:
    grouped: dict[str, tuple[int, list[int], list[float]]] = {}
    for external_id, version, item_id, rating in rows:
        entry = grouped.get(external_id)
        if entry is None:
            entry = grouped[external_id] = (int(version), [], [])
        if item_id is not None:
            entry[1].append(item_id)
            entry[2].append(np.nan if rating is None else rating)
    return {
        user: UserProfile(
            history_version=version,
            item_ids=np.asarray(item_list, dtype=np.int64),
            ratings=np.asarray(rating_list, dtype=np.float32),
        )
        for user, (version, item_list, rating_list) in grouped.items()
    }


@dataclass(frozen=True)
class ItemRows:
    """Every item of the database: ids, external ids and tags, in database id order."""

    db_ids: npt.NDArray[np.int64]
    external_ids: list[str]
    tags: list[list[str]]
    fingerprint: tuple[int, int, datetime | None]


def items_fingerprint(connection: Connection) -> tuple[int, int, datetime | None]:
    """(count, largest id, newest update time) of the items: changes whenever any item does."""
    count, largest, newest = connection.execute(
        select(func.count(), func.max(items.c.id), func.max(items.c.updated_at))
    ).one()
    return int(count), int(largest or 0), newest


def read_item_rows(connection: Connection) -> ItemRows:
    """Every item's database id, external id and tags (with the fingerprint read alongside)."""
    fingerprint = items_fingerprint(connection)
    rows = connection.execute(
        select(items.c.id, items.c.external_id, items.c.tags).order_by(items.c.id)
    ).all()
    return ItemRows(
        db_ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        external_ids=[str(r[1]) for r in rows],
        tags=[[str(tag) for tag in (r[2] or [])] for r in rows],
        fingerprint=fingerprint,
    )
