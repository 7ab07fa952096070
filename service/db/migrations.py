"""Alembic migrations run from code: upgrade to head, and whether a database is at head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.pool import NullPool

from service.db.session import WRITE_OPTION, create_db_engine

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding pyproject.toml (with `[tool.alembic]`) and migrations/."""


class SchemaNotCurrentError(RuntimeError):
    """The database schema is not at the newest revision that this code needs."""


def alembic_config() -> Config:
    """Alembic's configuration, read from `[tool.alembic]` in pyproject.toml."""
    return Config(toml_file=PROJECT_ROOT / "pyproject.toml")


def head_revision() -> str:
    """The newest revision among the migration scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision a database is at, or None when it has never been migrated."""
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        connection.rollback()
    return revision


def schema_is_current(engine: Engine) -> bool:
    """Whether the database's schema is at the head revision."""
    return current_revision(engine) == head_revision()


def check_schema(engine: Engine) -> None:
    """Raise SchemaNotCurrentError, telling the user to run `mfserve migrate`, unless at head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no schema yet" if current is None else f"is at revision {current}"
        raise SchemaNotCurrentError(
            f"the database {state} but this version of mfserve needs revision {head}: "
            "run `mfserve migrate` (or `make migrate`) first"
        )


def _run(database_url: str, action: str, revision: str) -> None:
    engine = create_db_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            with connection.begin():
                getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade_to_head(database_url: str) -> None:
    """Upgrade the database at `database_url` to the newest schema revision."""
    _ensure_sqlite_directory(database_url)
    _run(database_url, "upgrade", "head")


def downgrade_to(database_url: str, revision: str) -> None:
    """Downgrade the database at `database_url` to `revision` ("base" removes every table)."""
    _run(database_url, "downgrade", revision)


def _ensure_sqlite_directory(database_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
