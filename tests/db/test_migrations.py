"""Migrations upgrade an empty database to head and downgrade it back, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.db.migrations import (
    current_revision,
    downgrade_to,
    head_revision,
    schema_is_current,
    upgrade_to_head,
)
from service.db.session import create_db_engine
from service.db.tables import Base

CORE_TABLES = {"users", "items", "ratings"}


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_then_upgrade(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    try:
        assert current_revision(engine) is None
        assert not schema_is_current(engine)
        upgrade_to_head(empty_database_url)
        assert current_revision(engine) == head_revision()
        assert schema_is_current(engine)
        assert _tables(empty_database_url) >= CORE_TABLES

        downgrade_to(empty_database_url, "base")
        assert current_revision(engine) is None
        assert _tables(empty_database_url) <= {"alembic_version"}

        upgrade_to_head(empty_database_url)
        assert schema_is_current(engine)
    finally:
        engine.dispose()


def test_migrations_match_the_table_definitions(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_indexes_for_the_recommend_path_and_the_worker(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        inspector = inspect(engine)
        assert inspector.get_pk_constraint("ratings")["constrained_columns"] == [
            "user_id",
            "item_id",
        ]
        indexed = {tuple(index["column_names"]) for index in inspector.get_indexes("ratings")}
        assert ("stored_at",) in indexed
    finally:
        engine.dispose()


def test_history_touches_update_no_indexed_column(database_url: str) -> None:
    """The touch of every rating write may be a HOT update on PostgreSQL (0007)."""
    engine = create_db_engine(database_url)
    try:
        inspector = inspect(engine)
        indexed = {c for index in inspector.get_indexes("users") for c in index["column_names"]}
        assert not indexed & {"history_changed_at", "history_version"}
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                options = connection.exec_driver_sql(
                    "SELECT reloptions FROM pg_class WHERE relname = 'users'"
                ).scalar_one()
                method = connection.exec_driver_sql(
                    "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam"
                    " WHERE c.relname = 'ix_ratings_stored_at'"
                ).scalar_one()
            assert options == ["fillfactor=70"]
            assert method == "brin"
    finally:
        engine.dispose()
