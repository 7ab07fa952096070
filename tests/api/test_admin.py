"""Admin API and `/recommend`, through TestClient with the lifespan (and registry) running."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings, load_settings
from service.db.session import create_db_engine
from service.worker.loop import Worker
from tests.worker.conftest import store_ratings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {"epochs": 3, "embedding_size": 4, "device": "cpu"}


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return load_settings(
        **{
            **settings.model_dump(),
            "admin_token": TOKEN,
            "registry_poll_interval": 0.05,
            "retrain_interval": 0,
            "retrain_min_new_ratings": 0,
        }
    )


@pytest.fixture
def admin(admin_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings)) as test_client:
        yield test_client


@pytest.fixture
def db(admin_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(admin_settings.database_url)
    yield engine
    engine.dispose()


HANG_GUARD_S = 120.0
"""Only stops a hung test (a version never served); no promise is timed."""


def _wait_for_version(client: TestClient, version: int) -> dict[str, Any]:
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        ready = client.get("/readyz").json()
        if ready.get("model_version") == version:
            return dict(ready)
        assert time.monotonic() < deadline, ready
        time.sleep(0.05)


def test_without_a_token_the_admin_api_needs_an_admin_key(client: TestClient) -> None:
    for method, path in [("POST", "/admin/retrain"), ("GET", "/admin/jobs"), ("GET", "/models")]:
        assert client.request(method, path, json={}).status_code == 401
        response = client.request(method, path, headers=AUTH, json={})
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic czNjcmV0"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer wrong-token"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ],
)
def test_missing_or_wrong_tokens_are_refused(
    admin: TestClient, headers: dict[str, str], status: int
) -> None:
    for method, path in [
        ("POST", "/admin/retrain"),
        ("GET", "/admin/jobs"),
        ("GET", "/admin/jobs/1"),
        ("POST", "/admin/jobs/1/cancel"),
        ("GET", "/models"),
        ("GET", "/models/active"),
        ("POST", "/admin/models/1/activate"),
    ]:
        response = admin.request(method, path, headers=headers, json={"algorithm": "popular"})
        assert response.status_code == status, (method, path)
        assert response.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
    assert admin.get("/admin/jobs", headers=AUTH).json()["items"] == []  # nothing was queued


def test_bad_algorithm_or_config_is_422_naming_it(admin: TestClient) -> None:
    response = admin.post("/admin/retrain", headers=AUTH, json={"algorithm": "svd++"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "algorithm"
    response = admin.post(
        "/admin/retrain", headers=AUTH, json={"algorithm": "als-biased", "config": {"epochs": 0}}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "config.epochs"
    response = admin.post(
        "/admin/retrain", headers=AUTH, json={"algorithm": "als-biased", "config": {"nope": 1}}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "config.nope"
    response = admin.post("/admin/retrain", headers=AUTH, json={"algorithm": "als", "x": 1})
    assert response.status_code == 422
    assert admin.get("/admin/jobs", headers=AUTH).json()["items"] == []


def test_job_lifecycle_and_cancel(admin: TestClient) -> None:
    accepted = admin.post(
        "/admin/retrain", headers=AUTH, json={"algorithm": "als-biased", "config": FAST}
    )
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    job = admin.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "queued"
    assert job["config"] == FAST
    assert job["requested_by"] == "admin"
    assert set(job) >= {"job_id", "status", "progress", "metrics", "error", "version", "worker_id"}
    cancelled = admin.post(f"/admin/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = admin.post(f"/admin/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert admin.get("/admin/jobs/999", headers=AUTH).status_code == 404
    assert admin.post("/admin/jobs/999/cancel", headers=AUTH).status_code == 404
    assert admin.get("/admin/jobs/0", headers=AUTH).status_code == 422


def test_job_list_pages(admin: TestClient) -> None:
    ids = [
        admin.post("/admin/retrain", headers=AUTH, json={"algorithm": "popular"}).json()["job_id"]
        for _ in range(3)
    ]
    first = admin.get("/admin/jobs?limit=2", headers=AUTH).json()
    assert [j["job_id"] for j in first["items"]] == ids[:0:-1]
    second = admin.get(f"/admin/jobs?limit=2&cursor={first['next_cursor']}", headers=AUTH).json()
    assert [j["job_id"] for j in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    queued = admin.get("/admin/jobs?status=queued", headers=AUTH).json()["items"]
    assert len(queued) == 3
    assert admin.get("/admin/jobs?status=bogus", headers=AUTH).status_code == 422


def test_before_any_model(admin: TestClient) -> None:
    assert admin.get("/models/active", headers=AUTH).status_code == 404
    assert admin.get("/models", headers=AUTH).json() == {"items": [], "next_cursor": None}
    response = admin.get("/recommend/someone")
    assert response.status_code == 503
    assert response.json()["error"] == "no_model"
    ready = admin.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] is None
    assert admin.post("/admin/models/1/activate", headers=AUTH).status_code == 404


def test_train_serve_and_roll_back(admin: TestClient, admin_settings: Settings, db: Engine) -> None:
    store_ratings(db)
    worker = Worker(admin_settings, db)
    for _ in range(2):
        admin.post("/admin/retrain", headers=AUTH, json={"algorithm": "als-biased", "config": FAST})
        assert worker.step()
    ready = _wait_for_version(admin, 2)
    assert ready["model_algorithm"] == "als-biased"

    active = admin.get("/models/active", headers=AUTH).json()
    assert (active["version"], active["algorithm"], active["active"]) == (2, "als-biased", True)
    assert active["served"] is True
    assert active["config"]["epochs"] == 3
    assert active["metrics"]["gate"]["passed"] is True
    assert active["snapshot"]["n_ratings"] > 0
    listed = admin.get("/models", headers=AUTH).json()["items"]
    assert [(v["version"], v["active"]) for v in listed] == [(2, True), (1, False)]
    job = admin.get("/admin/jobs?limit=1", headers=AUTH).json()["items"][0]
    assert (job["status"], job["version"]) == ("succeeded", 2)
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 3
    assert job["metrics"]["validation"]["rmse"] > 0

    rated = {r["item"] for r in admin.get("/users/u3/ratings?limit=1000").json()["items"]}
    reply = admin.get("/recommend/u3?n=5").json()
    assert (reply["user"], reply["model_version"], reply["source"]) == ("u3", 2, "model")
    assert len(reply["items"]) == 5
    assert not rated & {entry["item"] for entry in reply["items"]}
    scores = [entry["score"] for entry in reply["items"]]
    assert scores == sorted(scores, reverse=True)
    stranger = admin.get("/recommend/stranger?n=3").json()
    assert (stranger["source"], stranger["model_version"], len(stranger["items"])) == (
        "popular",
        2,
        3,
    )
    assert admin.get("/recommend/u3?n=0").status_code == 422

    rolled = admin.post("/admin/models/1/activate", headers=AUTH)
    assert rolled.status_code == 200
    assert rolled.json()["active"] is True
    _wait_for_version(admin, 1)
    assert admin.get("/recommend/u3").json()["model_version"] == 1
    assert admin.get("/models/active", headers=AUTH).json()["version"] == 1
