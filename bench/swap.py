"""Swap and failure-detection latency: the timing expectations that the tests no longer assert.

1. Activation to served, on two API replicas of one PostgreSQL database: with the registry poll
   set to an hour (only LISTEN/NOTIFY can tell them) and with the default 2 s poll, against a
   single SQLite API process that has only its poll (the baseline, same run).
2. A worker killed with SIGKILL mid-training: the time until another worker's reaper marks its
   job failed, as a ratio of MFSERVE_HEARTBEAT_TIMEOUT.

    .venv/bin/python bench/swap.py                 # 10 activations per setting
    .venv/bin/python bench/swap.py --activations 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.db.migrations import upgrade_to_head  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.server import run_api_process  # noqa: E402
from tests.support.worker import WorkerProcess, run_worker_process  # noqa: E402

TOKEN = "bench-swap"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT_TIMEOUT_S = 3.0


def seeded_ratings(n_users: int = 300, n_items: int = 200, per_user: int = 30) -> list[Any]:
    """Ratings 1..5 of a rank-3 model for `per_user` random items of each user."""
    rng = np.random.default_rng(1)
    user_f, item_f = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    rows = []
    for u in range(n_users):
        for j in rng.choice(n_items, size=per_user, replace=False).tolist():
            rating = float(np.clip(np.round(3.3 + 0.7 * user_f[u] @ item_f[j]), 1, 5))
            rows.append({"user": f"u{u}", "item": f"i{j}", "rating": rating})
    return rows


def _wait(check: Any, what: str, limit: float = 300.0) -> Any:
    deadline = time.monotonic() + limit
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)
    return value


def _train(api: httpx.Client, config: dict[str, Any]) -> dict[str, Any]:
    job_id = api.post("/admin/retrain", headers=AUTH, json={"config": config}).json()["job_id"]

    def ended() -> dict[str, Any] | None:
        job = api.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return dict(_wait(ended, f"job {job_id}"))


@contextmanager
def deployment(url: str, replicas: int, poll: str, artifacts: Path) -> Iterator[list[httpx.Client]]:
    """API replicas and one worker on a migrated database holding two trained versions."""
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(artifacts),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_REGISTRY_POLL_INTERVAL": poll,
    }
    with ExitStack() as stack:
        apis = []
        for _ in range(replicas):
            server = stack.enter_context(run_api_process(url, env=env, startup_timeout=300))
            apis.append(stack.enter_context(httpx.Client(base_url=server.base_url, timeout=60)))
        if apis[0].get("/models", headers=AUTH).json()["items"] == []:
            assert apis[0].post("/ratings", json={"ratings": seeded_ratings()}).status_code == 201
            stack.enter_context(run_worker_process(url, env=env))
            for seed in (1, 2):
                assert _train(apis[0], {"epochs": 2, "seed": seed})["status"] == "succeeded"
        yield apis


def activation_latencies(apis: list[httpx.Client], count: int) -> list[float]:
    """Seconds from an activation's reply until every replica's /readyz names the version."""
    seconds = []
    for k in range(count):
        version = 1 + k % 2
        if all(api.get("/readyz").json()["model_version"] == version for api in apis):
            version = 3 - version
        assert apis[0].post(f"/admin/models/{version}/activate", headers=AUTH).status_code == 200
        started = time.perf_counter()
        for api in apis:
            _wait(lambda a=api, v=version: a.get("/readyz").json()["model_version"] == v, "swap")
        seconds.append(time.perf_counter() - started)
    return seconds


def heartbeat_detection(url: str, artifacts: Path) -> float:
    """Seconds from SIGKILL of a training worker until its job is failed by another worker."""
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(artifacts),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_HEARTBEAT_INTERVAL": "0.5",
        "MFSERVE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
        "MFSERVE_WORKER_THREADS": "1",
    }
    with ExitStack() as stack:
        server = stack.enter_context(run_api_process(url, env=env, startup_timeout=300))
        api = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=60))
        workers: list[WorkerProcess] = [
            stack.enter_context(run_worker_process(url, env=env)) for _ in range(2)
        ]
        assert api.post("/ratings", json={"ratings": seeded_ratings()}).status_code == 201
        accepted = api.post("/admin/retrain", headers=AUTH, json={"config": {"epochs": 10_000}})
        job_id = accepted.json()["job_id"]

        def training() -> dict[str, Any] | None:
            job = api.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
            return job if job["status"] == "running" and job["progress"]["epoch"] else None

        job = _wait(training, "training")
        pid = int(job["worker_id"].split(":")[1])
        victim = next(w for w in workers if w.process.pid == pid)
        victim.kill_9()
        killed = time.perf_counter()
        _wait(
            lambda: api.get(f"/admin/jobs/{job_id}", headers=AUTH).json()["status"] == "failed",
            "reaping",
        )
        return time.perf_counter() - killed


def _summary(name: str, seconds: list[float], baseline: float | None) -> str:
    median = statistics.median(seconds)
    ratio = "" if baseline is None else f"  {median / baseline:5.2f}x the poll-only baseline"
    return f"{name:<44} median {median * 1000:8.1f} ms  max {max(seconds) * 1000:8.1f} ms{ratio}"


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp, PostgresServer() as postgres:
        root = Path(tmp)
        sqlite_url = f"sqlite:///{root / 'swap.db'}"
        upgrade_to_head(sqlite_url)
        with deployment(sqlite_url, 1, "2", root / "sqlite-artifacts") as apis:
            baseline = activation_latencies(apis, args.activations)
        print(_summary("SQLite, 1 API, poll 2 s (baseline)", baseline, None))
        base = statistics.median(baseline)
        url = postgres.create_database("swap")
        upgrade_to_head(url)
        for poll, label in (("3600", "NOTIFY only (poll 1 h)"), ("2", "NOTIFY + poll 2 s")):
            with deployment(url, 2, poll, root / "pg-artifacts") as apis:
                seconds = activation_latencies(apis, args.activations)
            print(_summary(f"PostgreSQL, 2 APIs, {label}", seconds, base))
        reap_url = postgres.create_database("reap")
        upgrade_to_head(reap_url)
        detected = heartbeat_detection(reap_url, root / "reap")
        ratio = f"{detected / HEARTBEAT_TIMEOUT_S:.2f}x MFSERVE_HEARTBEAT_TIMEOUT"
        print(f"{'kill -9 mid-training to job failed':<44} {detected:8.2f} s  ({ratio})")


if __name__ == "__main__":
    main()
