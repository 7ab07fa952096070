"""The OpenAPI document is the contract: schemathesis, with every check, over every operation of
a real API server (keys required) that serves a trained model, on SQLite and PostgreSQL.

The run authenticates with an admin API key. It also calls `DELETE /admin/keys/{key_id}` with
ids of its own choosing, so the key is created after decoys (a high id) and checked afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import REPO_ROOT, run_api_process

pytestmark = pytest.mark.slow

TOKEN = "contract-admin-token"
MAX_EXAMPLES = 5
"""Cases per operation and phase: enough for every check to see each operation's shapes, while
both backends together stay well under 3 minutes."""
SEED = 20261129
DECOY_KEYS = 50
HANG_GUARD_S = 120.0
"""Only stops a hung test (a model never trained); no promise is timed."""
QUICK_CONFIG = {"epochs": 3, "embedding_size": 4, "device": "cpu"}
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")


def _env(artifacts: Path) -> dict[str, str]:
    return {
        "MFSERVE_AUTH": "keys",
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(artifacts),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_REGISTRY_POLL_INTERVAL": "0.2",
        "MFSERVE_WORKER_THREADS": "1",
    }


def _seed_and_train(client: httpx.Client, database_url: str, env: dict[str, str]) -> None:
    """Ratings and tagged items, then one model trained by a one-job worker and served."""
    rows = [
        {"user": f"u{u}", "item": f"i{i}", "rating": float(1 + (u * i) % 5)}
        for u in range(30)
        for i in range(20)
        if (u + i) % 3
    ]
    assert client.post("/ratings", json={"ratings": rows}).status_code == 201
    for i in range(20):
        reply = client.put(
            f"/items/i{i}", json={"title": f"Item {i}", "tags": [("even", "odd")[i % 2]]}
        )
        assert reply.status_code in (200, 201), reply.text
    reply = client.post("/admin/retrain", json={"algorithm": "als-biased", "config": QUICK_CONFIG})
    assert reply.status_code == 202, reply.text
    subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "MFSERVE_DATABASE_URL": database_url},
        check=True,
        timeout=HANG_GUARD_S,
    )
    deadline = time.monotonic() + HANG_GUARD_S
    while client.get("/readyz").json().get("model_version") is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _admin_key(client: httpx.Client) -> str:
    for n in range(DECOY_KEYS):
        decoy = client.post("/admin/keys", json={"name": f"decoy {n}", "scopes": ["read"]})
        assert decoy.status_code == 201, decoy.text
    reply = client.post("/admin/keys", json={"name": "schemathesis", "scopes": ["admin"]})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["key"])


def test_schemathesis_finds_no_failure(database_url: str, tmp_path: Path) -> None:
    env = _env(tmp_path / "artifacts")
    with (
        run_api_process(database_url, env=env) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client,
    ):
        _seed_and_train(client, database_url, env)
        key = _admin_key(client)
        command = [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(CONFIG_FILE),
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--header",
            f"Authorization: Bearer {key}",
            "--no-color",
        ]
        started = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False
        )
        took = time.monotonic() - started
        summary = result.stdout[-3000:]
        print(f"schemathesis took {took:.1f} s:\n{summary}")
        assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
        still = client.get("/admin/keys", headers={"Authorization": f"Bearer {key}"})
        assert still.status_code == 200, "the run revoked its own key: raise DECOY_KEYS"
        log = server.log()
        assert "unhandled error" not in log
        assert "Exception in ASGI application" not in log
