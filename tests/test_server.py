"""The API as a real uvicorn subprocess (`python -m service api`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import ApiProcess, run_api_process

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 120.0
"""Only stops a hung test (a worker child that never starts or never ends)."""


@pytest.mark.slow
def test_serves_ingest_and_reads(api_server: ApiProcess) -> None:
    with httpx.Client(base_url=api_server.base_url) as client:
        reply = client.post("/ratings", json={"ratings": [{"user": "u", "item": "i", "rating": 4}]})
        assert reply.status_code == 201
        assert client.get("/users/u/ratings").json()["items"][0]["rating"] == 4.0
        assert client.get("/readyz").json()["status"] == "ready"


def test_api_refuses_an_unmigrated_database(empty_database_url: str) -> None:
    env = {**os.environ, "MFSERVE_DATABASE_URL": empty_database_url, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "service", "api", "--port", "1"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "run `mfserve migrate`" in result.stderr


def test_sigterm_to_the_api_stops_its_worker_child(database_url: str, tmp_path: Path) -> None:
    env = {"MFSERVE_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    with run_api_process(database_url, env=env, with_worker=True) as server:
        deadline = time.monotonic() + HANG_GUARD_S
        children: list[int] = []
        while not children:
            assert time.monotonic() < deadline, server.log()
            children = _children(server.process.pid)
            time.sleep(0.1)
        server.process.terminate()
        server.process.wait(HANG_GUARD_S)
        deadline = time.monotonic() + HANG_GUARD_S
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, f"worker {children} outlived its API"
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    # a zombie (state Z) has exited and waits to be reaped by its (re)parent
    return stat.exists() and stat.read_text().split()[2] != "Z"
