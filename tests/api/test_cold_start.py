"""Cold start with a factorization machine served by the API (acceptance 2 and 3 of #14): an
item created with tags after training is recommended without a retrain, and a user with
attributes but no ratings gets a list from them (source "features") that differs by attribute.

Users of group "a" interact only with items tagged "a", users of group "b" only with "b" items;
users' attributes name their group."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings, load_settings
from service.db import jobs
from service.db.session import make_sessionmaker, transaction
from service.worker.loop import Worker

N_ITEMS = 40
N_USERS = 60
CONFIG = {"embedding_size": 8, "epochs": 10, "batch_size": 256, "device": "cpu", "seed": 3}
HANG_GUARD_S = 120.0
"""Only stops a hung test (a refresh that never comes); no promise is timed."""


def _group(index: int, size: int) -> str:
    return "a" if index < size // 2 else "b"


@pytest.fixture
def fm_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The API serving an `fm-implicit` model trained by the worker on the grouped data."""
    settings = load_settings(
        **{**settings.model_dump(), "retrain_interval": 0, "retrain_min_new_ratings": 0}
    )
    rng = np.random.default_rng(11)
    with TestClient(create_app(settings)) as client:
        for j in range(N_ITEMS):
            client.put(f"/items/i{j}", json={"tags": [_group(j, N_ITEMS)]})
        rows = []
        for u in range(N_USERS):
            group = _group(u, N_USERS)
            client.put(f"/users/u{u}", json={"attributes": {"group": group}})
            pool = np.arange(N_ITEMS // 2) + (0 if group == "a" else N_ITEMS // 2)
            for j in rng.choice(pool, size=8, replace=False):
                rows.append({"user": f"u{u}", "item": f"i{j}"})
        assert client.post("/ratings", json={"ratings": rows}).status_code == 201
        with transaction(make_sessionmaker(engine, write=True)) as session:
            jobs.enqueue_job(session, "fm-implicit", CONFIG)
        worker = Worker(settings, engine, worker_id="w")
        assert worker.step()
        deadline = time.monotonic() + HANG_GUARD_S
        while client.get("/recommend/u0").status_code != 200:
            assert time.monotonic() < deadline, "the trained model was never served"
            time.sleep(0.1)
        yield client


def _items(reply: Any) -> list[str]:
    return [entry["item"] for entry in reply.json()["items"]]


def test_a_new_item_with_tags_is_recommended_without_a_retrain(fm_client: TestClient) -> None:
    assert fm_client.put("/items/new-a", json={"tags": ["a"]}).status_code == 201
    assert fm_client.put("/items/new-b", json={"tags": ["b"]}).status_code == 201
    deadline = time.monotonic() + HANG_GUARD_S
    while "new-a" not in _items(reply := fm_client.get("/recommend/u0", params={"n": 15})):
        assert time.monotonic() < deadline, f"new-a never recommended: {reply.json()}"
        time.sleep(0.1)
    assert reply.json()["source"] == "model"
    listed = _items(reply)
    assert "new-b" not in listed or listed.index("new-a") < listed.index("new-b")
    scores = fm_client.post("/scores", json={"user": "u0", "items": ["new-a", "new-b"]}).json()
    assert scores["scores"][0]["score"] > scores["scores"][1]["score"]
    tagged = fm_client.get("/recommend/u59", params={"n": 40, "tag": "b"})
    assert "new-b" in _items(tagged)
    assert "new-a" not in _items(tagged)


def test_a_new_user_with_attributes_gets_a_list_from_them(fm_client: TestClient) -> None:
    fm_client.put("/users/fresh-a", json={"attributes": {"group": "a"}})
    fm_client.put("/users/fresh-b", json={"attributes": {"group": "b"}})
    deadline = time.monotonic() + HANG_GUARD_S
    while (reply := fm_client.get("/recommend/fresh-a")).json()["source"] != "features":
        assert time.monotonic() < deadline, f"attributes never used: {reply.json()}"
        time.sleep(0.1)
    other = fm_client.get("/recommend/fresh-b")
    assert other.json()["source"] == "features"
    first, second = _items(reply), _items(other)
    assert first != second
    assert sum(int(item[1:]) < N_ITEMS // 2 for item in first) >= 8, first
    assert sum(int(item[1:]) >= N_ITEMS // 2 for item in second) >= 8, second
    nobody = fm_client.put("/users/nobody", json={"attributes": {}})
    assert nobody.status_code == 201
    assert fm_client.get("/recommend/nobody").json()["source"] == "popular"
