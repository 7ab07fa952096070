"""An API process on PostgreSQL learns of new versions by NOTIFY, also after losing its
listener's connection.

The API polls the active version only once an hour, so every swap seen here was caused by an
activation notice waking its registry. The listener's database connection is then terminated
from the server side (as a restart or a network cut would); it reconnects and the next
activation still reaches the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.db.migrations import upgrade_to_head
from service.db.notifications import ACTIVATION_CHANNEL
from tests.integration.test_models_end_to_end import planted_ratings
from tests.support.postgres import PostgresServer
from tests.support.server import run_api_process
from tests.support.worker import run_worker_process

pytestmark = pytest.mark.slow

TOKEN = "wakeup-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HANG_GUARD_S = 180.0
"""Only stops a hung test (a notice that never arrives); no promise is timed."""
DATABASE = "activation_wakeup"


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database(DATABASE)
    upgrade_to_head(url)
    yield url
    postgres_server.drop_database(DATABASE)


def _until(what: str, check: Callable[[], Any], logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"hung waiting for {what}\n{logs()}")
        time.sleep(0.05)
    return value


def _listener_pids(server: PostgresServer) -> list[int]:
    """Backends of the test database whose last statement was the listener's LISTEN."""
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query = %s",
            (DATABASE, f"LISTEN {ACTIVATION_CHANNEL}"),
        ).fetchall()
    return [int(row[0]) for row in rows]


def _terminate(server: PostgresServer, pid: int) -> None:
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_notices_wake_the_registry_and_the_listener_reconnects(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_WORKER_THREADS": "1",
        "MFSERVE_REGISTRY_POLL_INTERVAL": "3600",
    }
    with ExitStack() as stack:
        server = stack.enter_context(
            run_api_process(database, env=env, startup_timeout=HANG_GUARD_S)
        )
        api = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=60))
        worker = stack.enter_context(run_worker_process(database, env=env))

        def logs() -> str:
            return f"{server.log()}\n{worker.log()}"

        assert api.post("/ratings", json={"ratings": planted_ratings()}).status_code == 201
        assert api.get("/readyz").json()["model_version"] is None
        listener = _until("the listener's LISTEN", lambda: _listener_pids(postgres_server), logs)

        def publish() -> int:
            accepted = api.post("/admin/retrain", headers=AUTH, json={"config": {"epochs": 3}})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]

            def ended() -> dict[str, Any] | None:
                job = api.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
                return job if job["status"] in ("succeeded", "failed") else None

            job = _until(f"job {job_id}", ended, logs)
            assert job["status"] == "succeeded", job
            return int(job["version"])

        def served(version: int) -> bool:
            return bool(api.get("/readyz").json()["model_version"] == version)

        # 1. the API looked once at start-up (nothing active); only a notice explains a swap
        first = publish()
        _until(f"version {first} served", lambda: served(first), logs)

        # 2. the server drops the listener's connection; it connects and listens again
        _terminate(postgres_server, listener[0])
        _until(
            "a new LISTEN connection",
            lambda: [pid for pid in _listener_pids(postgres_server) if pid not in listener],
            logs,
        )
        assert "activation listener lost its connection" in server.log()
        second = publish()
        _until(f"version {second} served", lambda: served(second), logs)

        # 3. a rollback through the admin API is a notice too
        assert api.post(f"/admin/models/{first}/activate", headers=AUTH).status_code == 200
        _until(f"version {first} served again", lambda: served(first), logs)
