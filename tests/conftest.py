"""Fixtures: every database test runs on SQLite (a file) and PostgreSQL (a throwaway server).

A template database per backend is migrated once (`alembic upgrade head`); each test gets a
fresh copy of it (SQLite: a copied file; PostgreSQL: CREATE DATABASE … TEMPLATE), so tests
are isolated and may also hand the URL to subprocesses.

Use `database_url` (a fresh database at head), `empty_database_url` (no schema), `settings`,
`engine`, `client` (TestClient with the lifespan running) or `api_server` (a real uvicorn
subprocess); each of them parametrizes the test over `[sqlite]` and `[postgresql]`.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings, load_settings
from service.db.migrations import upgrade_to_head
from service.db.session import create_db_engine
from tests.support.postgres import PostgresServer
from tests.support.server import ApiProcess, run_api_process

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sqlite", "postgresql")


class DatabaseFactory:
    """Fresh databases of one backend: copies of a template migrated once per session."""

    def __init__(self, backend: str, root: Path, postgres: PostgresServer | None) -> None:
        self.backend = backend
        self.root = root
        self.postgres = postgres
        self._names = itertools.count()
        self._template: str | None = None

    def _sqlite_url(self, path: Path) -> str:
        return f"sqlite:///{path}"

    def _template_name(self) -> str:
        if self._template is None:
            if self.postgres is None:
                path = self.root / "template.db"
                upgrade_to_head(self._sqlite_url(path))
                self._template = str(path)
            else:
                upgrade_to_head(self.postgres.create_database("template_head"))
                self._template = "template_head"
        return self._template

    def fresh(self) -> tuple[str, str]:
        """(URL, name) of a new database at head."""
        template = self._template_name()
        name = f"test_{next(self._names)}"
        if self.postgres is None:
            path = self.root / f"{name}.db"
            shutil.copyfile(template, path)
            return self._sqlite_url(path), name
        return self.postgres.create_database(name, template=template), name

    def empty(self) -> tuple[str, str]:
        """(URL, name) of a new database without any schema."""
        name = f"empty_{next(self._names)}"
        if self.postgres is None:
            return self._sqlite_url(self.root / f"{name}.db"), name
        return self.postgres.create_database(name), name

    def drop(self, name: str) -> None:
        """Remove a database made by this factory."""
        if self.postgres is None:
            for suffix in ("", "-wal", "-shm"):
                (self.root / f"{name}.db{suffix}").unlink(missing_ok=True)
        else:
            self.postgres.drop_database(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole test session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def _factories() -> dict[str, DatabaseFactory]:
    return {}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test run: "sqlite" or "postgresql"."""
    return str(request.param)


@pytest.fixture
def database_factory(
    backend: str,
    _factories: dict[str, DatabaseFactory],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> DatabaseFactory:
    """The session's factory of fresh databases for this backend."""
    if backend not in _factories:
        postgres = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
        root = tmp_path_factory.mktemp(f"databases-{backend}")
        _factories[backend] = DatabaseFactory(backend, root, postgres)
    return _factories[backend]


@pytest.fixture
def database_url(database_factory: DatabaseFactory) -> Iterator[str]:
    """URL of a fresh database at the head revision, dropped after the test."""
    url, name = database_factory.fresh()
    yield url
    database_factory.drop(name)


@pytest.fixture
def empty_database_url(database_factory: DatabaseFactory) -> Iterator[str]:
    """URL of a fresh database with no schema at all, dropped after the test."""
    url, name = database_factory.empty()
    yield url
    database_factory.drop(name)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test's database (artifacts under the test's tmp_path).

    The data API is open (`auth="off"`) here: the tests of keys and scopes ask for `keys`.
    """
    return load_settings(
        auth="off",
        database_url=database_url,
        artifact_dir=tmp_path / "artifacts",
        cache_dir=REPO_ROOT / ".cache",
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's database, disposed afterwards."""
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient of the app with its lifespan running."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def api_server(database_url: str, tmp_path: Path) -> Iterator[ApiProcess]:
    """`python -m service api` as a real subprocess on the test's database."""
    env = {"MFSERVE_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    with run_api_process(database_url, env=env) as server:
        yield server


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """MovieLens 100K's `.inter` file (downloaded once into ./.cache)."""
    from service.tools.datasets import fetch_ml100k

    return fetch_ml100k(REPO_ROOT / ".cache")
