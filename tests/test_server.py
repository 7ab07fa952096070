"""The API as a real uvicorn subprocess (`python -m service api`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.server import ApiProcess

REPO_ROOT = Path(__file__).resolve().parents[1]


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
