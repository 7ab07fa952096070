"""Alembic environment: the database URL comes from the caller or from mfserve's Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from service.db.session import WRITE_OPTION, create_db_engine, normalize_database_url
from service.db.tables import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # The caller's URL (`alembic -x url=...` or Config.attributes), else MFSERVE_DATABASE_URL.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    if url:
        return str(url)
    from service.config import load_settings

    return load_settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL for `alembic upgrade --sql` without connecting."""
    context.configure(
        url=normalize_database_url(_database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the caller's connection, or on a connection to Settings' database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(_database_url(), poolclass=NullPool)
    try:
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
