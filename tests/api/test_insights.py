"""The dashboard's page and its admin reads (curves, ingest counts, lookups), on both backends."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.api.dashboard import STATIC_DIR, WEB_DIR
from service.app import create_app
from service.config import Settings, load_settings
from service.db import stats
from service.db.session import create_db_engine, make_sessionmaker, transaction
from service.worker.loop import Worker

TOKEN = "insights-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALS = {"epochs": 4, "embedding_size": 4}
FLEXMF = {"epochs": 6, "embedding_size": 4, "batch_size": 128, "learning_rate": 0.05}


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return load_settings(
        **{
            **settings.model_dump(),
            "admin_token": TOKEN,
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


def _post(admin: TestClient, rows: list[dict[str, object]]) -> None:
    reply = admin.post("/ratings", json={"ratings": rows})
    assert reply.status_code == 201, reply.text


def _planted(admin: TestClient) -> None:
    rows: list[dict[str, object]] = [
        {"user": f"u{u}", "item": f"i{i}", "rating": float(1 + (u * 7 + i * 3) % 5)}
        for u in range(30)
        for i in range(20)
        if (u + i) % 3
    ]
    _post(admin, rows)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/admin/stats", {}, 401),
        ("/admin/stats", {"Authorization": "Bearer wrong"}, 403),
        ("/admin/jobs/1/curve", {}, 401),
        ("/admin/users/u1/latest", {"Authorization": "Bearer wrong"}, 403),
        ("/admin/item-titles?item=a", {}, 401),
    ],
)
def test_the_admin_reads_need_the_token(
    admin: TestClient, path: str, headers: dict[str, str], status: int
) -> None:
    assert admin.get(path, headers=headers).status_code == status


def test_the_page_is_public_and_serves_its_vendored_files(admin: TestClient) -> None:
    page = admin.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "no-referrer" in page.headers["referrer-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    sources = [s for s in re.findall(r'(?:src|href)="([^"]+)"', page.text) if s != "#"]
    assert sources
    assert all(source.startswith("/dashboard/static/") for source in sources)
    for source in sources:
        assert admin.get(source).status_code == 200, source
    assert admin.get("/dashboard/static/../index.html").status_code == 404
    assert admin.get("/dashboard/static/package.json").status_code == 404


def test_vendored_files_match_the_pinned_npm_versions_and_keep_their_licences() -> None:
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())["packages"]
    chart = (STATIC_DIR / "vendor" / "chart.umd.min.js").read_text()
    assert f"Chart.js v{lock['node_modules/chart.js']['version']}" in chart[:200]
    pico = (STATIC_DIR / "vendor" / "pico.min.css").read_text()
    assert f"Pico CSS ✨ v{lock['node_modules/@picocss/pico']['version']}" in pico[:200]
    for licence in ("chart.js", "kurkle-color", "pico"):
        assert "MIT License" in (STATIC_DIR / "vendor" / f"{licence}.LICENSE.md").read_text()


def test_curves_keep_every_epoch_of_finished_jobs(
    admin: TestClient, admin_settings: Settings, db: Engine
) -> None:
    _planted(admin)
    worker = Worker(admin_settings, db)
    for algorithm, config in [("als-biased", ALS), ("flexmf-explicit", FLEXMF)]:
        admin.post("/admin/retrain", headers=AUTH, json={"algorithm": algorithm, "config": config})
        assert worker.step()

    als = admin.get("/admin/jobs/1/curve", headers=AUTH).json()
    assert (als["job_id"], als["status"], als["algorithm"]) == (1, "succeeded", "als-biased")
    als_training = [p for p in als["points"] if p["phase"] == "training"]
    assert [p["epoch"] for p in als_training] == [1, 2, 3, 4]
    assert {p["phase"] for p in als["points"]} == {"training", "refit"}  # refit on the snapshot
    assert all(p["epochs"] == 4 and p["loss"] is not None for p in als_training)
    assert all(p["validation_rmse"] is None for p in als["points"])

    flexmf = admin.get("/admin/jobs/2/curve", headers=AUTH).json()
    job = admin.get("/admin/jobs/2", headers=AUTH).json()
    points = flexmf["points"]
    training = [p for p in points if p["phase"] == "training"]
    refit = [p for p in points if p["phase"] == "refit"]
    assert points == training + refit
    assert [p["epoch"] for p in training] == list(range(1, len(training) + 1))
    assert [p["epoch"] for p in refit] == list(range(1, job["progress"]["epoch"] + 1))
    assert points[-1]["loss"] == pytest.approx(job["progress"]["loss"])
    assert all(p["validation_rmse"] is not None and p["validation_rmse"] > 0 for p in training)
    for phase in (training, refit):
        elapsed = [p["elapsed_s"] for p in phase]
        assert elapsed == sorted(elapsed)

    assert admin.get("/admin/jobs/99/curve", headers=AUTH).status_code == 404
    assert admin.get("/admin/jobs/0/curve", headers=AUTH).status_code == 422


def test_stats_count_ratings_per_hour_and_totals(admin: TestClient, db: Engine) -> None:
    _planted(admin)
    reply = admin.get("/admin/stats", headers=AUTH, params={"days": 2}).json()
    assert len(reply["hours"]) == 48
    assert sum(h["ratings"] for h in reply["hours"]) == reply["ratings"] == 400
    assert (reply["users"], reply["items"]) == (30, 20)
    assert [h["ratings"] for h in reply["hours"] if h["ratings"]] == [400]  # one batch, one hour
    assert admin.get("/admin/stats", headers=AUTH, params={"days": 0}).status_code == 422
    assert admin.get("/admin/stats", headers=AUTH, params={"days": 32}).status_code == 422

    # hours are UTC buckets of the stored time, also on a window that ends later
    later = datetime.now(UTC) + timedelta(hours=3)
    with transaction(make_sessionmaker(db)) as session:
        counted = stats.ingest_stats(session, hours=5, now=later)
    assert len(counted.hours) == 5
    assert [h.ratings for h in counted.hours if h.ratings] == [400]
    steps = [b.hour - a.hour for a, b in zip(counted.hours, counted.hours[1:], strict=False)]
    assert steps == [timedelta(hours=1)] * 4
    assert all(h.hour.minute == 0 and h.hour.tzinfo is not None for h in counted.hours)


def test_latest_ratings_newest_first_with_titles(admin: TestClient) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    _post(
        admin,
        [
            {
                "user": "zoë",
                "item": f"film{k}",
                "rating": 3,
                "timestamp": (base + timedelta(days=k)).isoformat(),
            }
            for k in range(5)
        ],
    )
    assert admin.put("/items/film3", json={"title": "Three"}).status_code == 200
    reply = admin.get("/admin/users/zo%C3%AB/latest", headers=AUTH, params={"n": 3})
    assert reply.status_code == 200
    body = reply.json()
    assert body["user"] == "zoë"
    assert [(r["item"], r["title"]) for r in body["items"]] == [
        ("film4", None),
        ("film3", "Three"),
        ("film2", None),
    ]
    assert body["items"][0]["timestamp"].startswith("2026-01-05T00:00:00")
    assert admin.get("/admin/users/nobody/latest", headers=AUTH).status_code == 404
    assert (
        admin.get("/admin/users/zo%C3%AB/latest", headers=AUTH, params={"n": 0}).status_code == 422
    )


def test_item_titles_name_unknown_items(admin: TestClient) -> None:
    assert admin.put("/items/a", json={"title": "Alpha"}).status_code == 201
    assert admin.put("/items/b", json={}).status_code == 201
    reply = admin.get("/admin/item-titles", headers=AUTH, params={"item": ["a", "b", "c", "a"]})
    assert reply.json() == {"titles": {"a": "Alpha", "b": None}, "unknown_items": ["c"]}
    assert admin.get("/admin/item-titles", headers=AUTH).status_code == 422
