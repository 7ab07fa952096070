"""Fixtures of the client tests: real API processes (uvicorn) on SQLite and PostgreSQL, shared by
the tests of one module (per backend), since starting one takes seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, DatabaseFactory
from tests.support.postgres import PostgresServer

TOKEN = "client-test-token"

QUICK_CONFIG = {"epochs": 3, "embedding_size": 4, "device": "cpu"}
"""An `als-biased` config that trains on the seeded ratings in well under a second."""


def service_env(artifact_dir: Path, **overrides: str) -> dict[str, str]:
    """`MFSERVE_*` variables of a test server: admin token, no scheduled retrains, quick polls."""
    return {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(artifact_dir),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_DEFAULT_CONFIG": '{"epochs": 3, "embedding_size": 4, "device": "cpu"}',
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_REGISTRY_POLL_INTERVAL": "0.2",
        "MFSERVE_WORKER_THREADS": "1",
        "MFSERVE_HEARTBEAT_INTERVAL": "0.5",
        **overrides,
    }


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest,
    _factories: dict[str, DatabaseFactory],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A fresh database at head shared by one test module, on each backend in turn."""
    backend = str(request.param)
    if backend not in _factories:
        postgres: PostgresServer | None = None
        if backend == "postgresql":
            postgres = request.getfixturevalue("postgres_server")
        root = tmp_path_factory.mktemp(f"databases-{backend}")
        _factories[backend] = DatabaseFactory(backend, root, postgres)
    factory = _factories[backend]
    url, name = factory.fresh()
    yield url
    factory.drop(name)


@pytest.fixture(scope="module")
def module_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact directory of the module's server."""
    return tmp_path_factory.mktemp("artifacts")
