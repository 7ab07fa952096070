"""A key revoked through one API process is refused by another at once: two real processes on
one PostgreSQL, keys re-read only hourly, so only the revocation notice can reach the second."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import PostgresServer
from tests.support.server import run_api_process

pytestmark = pytest.mark.slow

TOKEN = "revocation-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HANG_GUARD_S = 30.0
"""Only stops a hung test; the test records how many calls the second process still let in."""


def test_a_revoked_key_is_refused_by_every_process(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    from service.db.migrations import upgrade_to_head

    url = postgres_server.create_database("key_revocation")
    upgrade_to_head(url)
    env = {
        "MFSERVE_AUTH": "keys",
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_KEY_REFRESH_INTERVAL": "3600",
        "MFSERVE_ARTIFACT_DIR": str(tmp_path / "artifacts"),
    }
    with (
        run_api_process(url, env=env) as first,
        run_api_process(url, env=env) as second,
        httpx.Client(base_url=first.base_url, timeout=10) as a,
        httpx.Client(base_url=second.base_url, timeout=10) as b,
    ):
        created = a.post("/admin/keys", headers=ADMIN, json={"name": "k", "scopes": ["read"]})
        assert created.status_code == 201
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        deadline = time.monotonic() + HANG_GUARD_S  # the creation notice makes B re-read
        while b.get("/items", headers=key).status_code != 200:
            assert time.monotonic() < deadline, "the second process never learnt of the key"
            time.sleep(0.01)

        assert a.delete(f"/admin/keys/{created.json()['id']}", headers=ADMIN).status_code == 204
        let_in = 0
        deadline = time.monotonic() + HANG_GUARD_S
        while (status := b.get("/items", headers=key).status_code) == 200:
            let_in += 1
            assert time.monotonic() < deadline, "the revocation never reached the second process"
        assert status == 403
        assert let_in == 0, f"the second process let the revoked key in {let_in} more times"
        assert a.get("/items", headers=key).status_code == 403
