"""Engines and transactions: SQLite in WAL mode with immediate write locks, or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another writer's lock before giving up."""

WRITE_OPTION = "mfserve_write"
"""Execution option that marks a connection's transaction as a writer (SQLite: BEGIN IMMEDIATE)."""


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` and `postgres://` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _prepare_sqlite(engine: Engine, mmap_bytes: int = 0) -> None:
    """WAL, foreign keys and a busy timeout; transactions begun by us, writers immediately;
    `mmap_bytes` of the database file read through a memory map instead of read calls."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            if mmap_bytes:
                cursor.execute(f"PRAGMA mmap_size = {int(mmap_bytes)}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_db_engine(url: str, *, sqlite_mmap_bytes: int = 0, **kwargs: Any) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, configured for this service
    (`sqlite_mmap_bytes`: see `_prepare_sqlite`; ignored on PostgreSQL)."""
    url = normalize_database_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        _prepare_sqlite(engine, sqlite_mmap_bytes)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """Sessions that keep loaded objects after commit; `write` ones lock SQLite at first use."""
    bind = engine.execution_options(**{WRITE_OPTION: True}) if write else engine
    return sessionmaker(bind=bind, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on error."""
    with sessions() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def refresh_statistics(engine: Engine) -> None:
    """Refresh the query planner's statistics after a bulk load (PostgreSQL: `ANALYZE`).

    Until autovacuum gets to them, freshly filled tables look empty to the planner, which then
    picks sequential scans for indexed lookups.
    """
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("ANALYZE users, items, ratings")
        else:
            connection.exec_driver_sql("PRAGMA optimize")
