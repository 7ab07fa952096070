"""Helpers of the dashboard's browser tests: the deployment, waits, login, screenshots."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.support.server import ApiProcess
from tests.support.synthetic import low_rank_ratings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / ".cache" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HANG_GUARD_S = 180.0
"""Only stops a hung test (a job or a page that never gets there); no promise is timed."""

ALS_CONFIG = {"embedding_size": 8, "epochs": 8}
FLEXMF_CONFIG = {
    "embedding_size": 8,
    "epochs": 30,
    "batch_size": 128,
    "learning_rate": 0.05,
    "sigmoid_range": True,
}


def wait_for(what: str, check: Callable[[], Any], server: ApiProcess | None = None) -> Any:
    """Poll `check` until it returns something truthy; fail after HANG_GUARD_S."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            log = "" if server is None else server.log()[-4000:]
            pytest.fail(f"hung waiting for {what}\n{log}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Deployment:
    """The running server, an admin HTTP client, and what was trained."""

    server: ApiProcess
    api: httpx.Client
    als_job: int
    flexmf_job: int
    als_version: int
    flexmf_version: int

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the admin API reports it now."""
        return job_now(self.api, job_id)


def job_now(api: httpx.Client, job_id: int) -> dict[str, Any]:
    """A job as the admin API reports it now."""
    reply = api.get(f"/admin/jobs/{job_id}")
    reply.raise_for_status()
    return dict(reply.json())


def train(server: ApiProcess, api: httpx.Client, algorithm: str, config: dict[str, Any]) -> Any:
    """Queue a retrain and wait until it ended successfully; the job."""
    reply = api.post("/admin/retrain", json={"algorithm": algorithm, "config": config})
    assert reply.status_code == 202, reply.text
    job_id = int(reply.json()["job_id"])

    def ended() -> dict[str, Any] | None:
        job = job_now(api, job_id)
        return None if job["status"] in ("queued", "running") else job

    job = wait_for(f"job {job_id} to end", ended, server)
    assert job["status"] == "succeeded", job
    return job


def seed(api: httpx.Client) -> None:
    """Post the planted ratings (60 users, 40 items) and give every item a title and a tag."""
    data = low_rank_ratings(n_users=60, n_items=40, density=0.5, seed=7)
    rows = [
        {
            "user": data.user_ids[int(u)],
            "item": data.item_ids[int(i)],
            "rating": float(v),
            "timestamp": 1_700_000_000 + 60 * n,
        }
        for n, (u, i, v) in enumerate(zip(data.users, data.items, data.values, strict=True))
    ]
    reply = api.post("/ratings", json={"ratings": rows})
    assert reply.status_code == 201, reply.text
    for j, item in enumerate(data.item_ids):
        body = {"title": f"Film number {j}", "tags": ["even" if j % 2 == 0 else "odd"]}
        assert api.put(f"/items/{item}", json=body).status_code == 200


def log_in(page: Page) -> None:
    """Log in with the admin token and wait for the dashboard."""
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.wait_for_selector("#dashboard:not([hidden])")


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under .cache/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
