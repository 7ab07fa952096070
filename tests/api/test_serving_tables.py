"""The registry builds every serving table before a version is swapped in: no request does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings
from service.db.jobs import claim_job, enqueue_job
from service.db.session import make_sessionmaker, transaction
from service.db.versions import ModelVersion, publish_version
from service.ml import ranking
from service.ml.artifacts import write_artifact
from service.registry import ItemIndex, ModelView, UserStates
from tests.api.serving_setup import seed_database, service_state, serving_settings, train_served

HANG_GUARD_S = 120.0
"""Only stops a hung test (a swap that never happens); no load time is promised."""


def _publish(engine: Engine, artifact_dir: Path) -> int:
    """Train on the database's ratings, write the artifact and activate it as the worker does."""
    served = train_served(engine, fallback=False)
    info = write_artifact(
        served.model, artifact_dir, fallback=served.fallback, snapshot=served.snapshot
    )
    with transaction(make_sessionmaker(engine, write=True)) as session:
        enqueue_job(session, served.model.name, {}, requested_by="admin")
        job = claim_job(session, "test")
        assert job is not None
        version = publish_version(
            session,
            job.job_id,
            "test",
            ModelVersion(
                algorithm=served.model.name,
                config={},
                artifact=info.path.name,
                sha256=info.sha256,
                size_bytes=info.size_bytes,
                n_ratings=0,
                n_users=served.model.n_users,
                n_items=served.model.n_items,
                newest_rating_at=None,
                snapshot_taken_at=served.loaded_at,
                stored_until=None,
                metrics={},
            ),
            activate=True,
        )
    assert version is not None
    return version.version


@pytest.fixture
def polling_client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on seeded ratings whose registry polls often, serving no model yet."""
    fast = serving_settings(settings, registry_poll_interval=0.05)
    with TestClient(create_app(fast)) as client:
        seed_database(client)
        yield client


def test_the_first_request_after_a_swap_finds_every_table_built(
    polling_client: TestClient, serving_db: Engine, settings: Settings, monkeypatch: Any
) -> None:
    registry = service_state(polling_client).registry
    builders: list[str] = []

    def recorded(name: str, build: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            builders.append(f"{name} in {threading.current_thread().name}")
            return build(*args, **kwargs)

        return staticmethod(wrapper)

    for owner, name in (
        (ranking.ItemTable, "build"),
        (ModelView, "build"),
        (ItemIndex, "build"),
        (UserStates, "build"),
    ):
        monkeypatch.setattr(owner, name, recorded(f"{owner.__name__}.{name}", getattr(owner, name)))

    version = _publish(serving_db, Path(settings.artifact_dir))
    deadline = time.monotonic() + HANG_GUARD_S  # only stops a hung test
    while registry.version != version and time.monotonic() < deadline:
        time.sleep(0.02)
    served = registry.current
    assert served is not None
    assert served.version == version
    tables = served.tables
    assert tables is not None
    assert tables.primary.table.n_items == served.model.n_items
    assert tables.fallback is tables.primary  # no popularity model packed
    assert int((tables.users.markers >= 0).sum()) == served.model.n_users
    portal = polling_client.portal
    assert portal is not None
    loop_thread = portal.call(lambda: threading.current_thread().name)
    built = list(builders)
    assert built
    assert all(not entry.endswith(f" in {loop_thread}") for entry in built), built

    builders.clear()
    reply = polling_client.get("/recommend/u3?n=5&tag=even")
    assert reply.status_code == 200
    assert reply.json()["source"] == "model"
    assert len(reply.json()["items"]) == 5
    assert polling_client.post("/scores", json={"user": "u3", "items": ["i1"]}).status_code == 200
    assert polling_client.get("/items/i2/similar?n=3").status_code == 200
    assert builders == []  # no request built a table
    assert registry.current is served
