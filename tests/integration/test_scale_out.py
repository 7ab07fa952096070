"""Issue 6: the compose topology as plain processes — one PostgreSQL, `mfserve migrate`, two
API replicas on different ports and two workers sharing one artifact directory.

- both replicas serve a newly activated version (no process is a master), told by PostgreSQL
  LISTEN/NOTIFY: their poll interval is an hour, so only a notice can explain the swap;
- ratings posted to one replica are folded in by the other on the very next request;
- several jobs queued at once are each run by exactly one of the two workers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.tools.datasets import RatingTable, load_ml100k
from tests.support.postgres import PostgresServer
from tests.support.server import REPO_ROOT, run_api_process
from tests.support.worker import WorkerProcess, run_worker_process

pytestmark = pytest.mark.slow

TOKEN = "scale-out-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"epochs": 4, "embedding_size": 8}
JOBS = 4
HANG_GUARD_S = 300.0
"""Only stops a hung test (a job or a swap that never happens); no promise is timed."""
POLL_AN_HOUR = "3600"
BATCH = 10_000


@pytest.fixture(scope="module")
def ml100k() -> RatingTable:
    return load_ml100k(REPO_ROOT / ".cache")


@pytest.fixture
def migrated_postgres(postgres_server: PostgresServer) -> Iterator[str]:
    """A new PostgreSQL database brought to head by the real `mfserve migrate` command."""
    name = "scale_out"
    url = postgres_server.create_database(name)
    result = subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=REPO_ROOT,
        env={**os.environ, "MFSERVE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    yield url
    postgres_server.drop_database(name)


def _load(api: httpx.Client, table: RatingTable) -> None:
    for start in range(0, len(table), BATCH):
        stop = start + BATCH
        rows = [
            {"user": str(u), "item": str(i), "rating": float(r), "timestamp": int(t)}
            for u, i, r, t in zip(
                table.users[start:stop],
                table.items[start:stop],
                table.ratings[start:stop],
                table.timestamps[start:stop],
                strict=True,
            )
        ]
        response = api.post("/ratings", json={"ratings": rows})
        assert response.status_code == 201, response.text


def _wait_jobs(api: httpx.Client, job_ids: list[int], workers: list[WorkerProcess]) -> list[Any]:
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        states = [api.get(f"/admin/jobs/{job_id}", headers=AUTH).json() for job_id in job_ids]
        if all(state["status"] in ("succeeded", "failed", "cancelled") for state in states):
            return states
        assert time.monotonic() < deadline, (states, *(w.log() for w in workers))
        time.sleep(0.2)


def _served_versions(apis: list[httpx.Client]) -> list[int | None]:
    return [api.get("/readyz").json().get("model_version") for api in apis]


def _until_served(apis: list[httpx.Client], versions: list[int], replicas: list[Any]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while _served_versions(apis) != versions:
        assert time.monotonic() < deadline, (_served_versions(apis), [r.log() for r in replicas])
        time.sleep(0.05)


def test_two_replicas_and_two_workers_on_one_postgres(
    migrated_postgres: str, ml100k: RatingTable, tmp_path: Path
) -> None:
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_WORKER_THREADS": "1",
        # after its first look at start-up, a replica polls again only after an hour: every
        # version it serves later was announced by PostgreSQL NOTIFY
        "MFSERVE_REGISTRY_POLL_INTERVAL": POLL_AN_HOUR,
    }
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(run_api_process(migrated_postgres, env=env)) for _ in range(2)
        ]
        apis = [
            stack.enter_context(httpx.Client(base_url=replica.base_url, timeout=30))
            for replica in replicas
        ]
        workers = [
            stack.enter_context(run_worker_process(migrated_postgres, env=env)) for _ in range(2)
        ]
        first, second = apis
        _load(first, ml100k)

        # several jobs queued at once: each runs on exactly one worker
        job_ids = [
            first.post(
                "/admin/retrain",
                headers=AUTH,
                json={"algorithm": "als-biased", "config": {**QUICK, "seed": n}},
            ).json()["job_id"]
            for n in range(JOBS)
        ]
        states = _wait_jobs(second, job_ids, workers)
        assert [state["status"] for state in states] == ["succeeded"] * JOBS, states
        versions = sorted(state["version"] for state in states)
        assert versions == list(range(1, JOBS + 1))
        logs = [worker.log() for worker in workers]
        for job_id in job_ids:
            runs = sum(len(re.findall(rf"job {job_id}: training ", log)) for log in logs)
            assert runs == 1, (job_id, logs)
        worker_ids = {state["worker_id"] for state in states}
        assert all(worker_ids), states

        # the replicas looked at the active version when they started, before any existed, and
        # look again only after an hour unless a NOTIFY wakes them: the publishes reach them...
        _until_served(apis, [JOBS, JOBS], replicas)
        # ...and so does an activation through one replica (both have served version JOBS, so
        # their last look came after its publish, and the next poll is an hour after that)
        activated = second.post("/admin/models/1/activate", headers=AUTH)
        assert activated.status_code == 200, activated.text
        _until_served(apis, [1, 1], replicas)

        # ratings posted to one replica are folded in by the other on the next request
        history = [
            {"user": "scale-out-newcomer", "item": item, "rating": 5.0}
            for item in ("50", "172", "181", "174", "98")
        ]
        assert first.post("/ratings", json={"ratings": history}).status_code == 201
        reply = second.get("/recommend/scale-out-newcomer", params={"n": 20})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["source"] == "foldin"
        assert body["model_version"] == 1
        recommended = {entry["item"] for entry in body["items"]}
        assert recommended.isdisjoint({row["item"] for row in history})
        assert len(recommended) == 20
