"""The worker publishes the gated config refitted on the whole snapshot (acceptance 4 of #14):
the served model scores what the same config fitted offline on every rating scores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings, load_settings
from service.db import jobs, queries
from service.db.session import make_sessionmaker, transaction
from service.db.snapshot import read_ratings_snapshot
from service.db.user_attributes import put_user_attributes
from service.db.versions import get_active_version
from service.ml.catalog import create_model
from service.ml.features import FeatureData
from service.worker.loop import Worker, snapshot_info
from service.worker.pipeline import RatingsData, build_interactions, refit_config

FM = {"embedding_size": 8, "epochs": 15, "batch_size": 128, "device": "cpu", "seed": 5}


def _settings(settings: Settings, **overrides: Any) -> Settings:
    values = {"retrain_interval": 0, "retrain_min_new_ratings": 0, **overrides}
    return load_settings(**{**settings.model_dump(), **values})


def _add_features(engine: Engine) -> None:
    now = datetime.now(UTC)
    with transaction(make_sessionmaker(engine, write=True)) as session:
        for j in range(40):
            tags = ["even" if j % 2 == 0 else "odd"] + (["tri"] if j % 3 == 0 else [])
            queries.put_item(
                session, f"i{j}", title=None, tags=tags, attributes={"year": 1990 + j}, now=now
            )
        for u in range(0, 60, 2):
            put_user_attributes(session, f"u{u}", {"age": 20 + u, "club": u % 3 == 0}, now=now)


def _run(engine: Engine, settings: Settings, algorithm: str) -> jobs.TrainingJob:
    with transaction(make_sessionmaker(engine, write=True)) as session:
        job_id = jobs.enqueue_job(session, algorithm, FM).job_id
    assert Worker(settings, engine, worker_id="w").step()
    with transaction(make_sessionmaker(engine)) as session:
        return jobs.get_job(session, job_id)


def _offline(engine: Engine, algorithm: str, config: dict[str, Any]) -> Any:
    """The same config fitted on every rating of the database, as `mfserve train` would."""
    snapshot = read_ratings_snapshot(engine, with_features=True)
    assert snapshot.features is not None
    features = snapshot.features
    data = RatingsData(
        users=snapshot.users,
        items=snapshot.items,
        values=snapshot.values,
        user_ids=snapshot.user_ids,
        item_ids=snapshot.item_ids,
        info=snapshot_info(snapshot),
        features=FeatureData.of(
            features.user_attributes, features.item_tags, features.item_attributes
        ),
    )
    model = create_model(algorithm, config)
    model.fit(build_interactions(data, model.explicit))
    return model


def test_the_served_model_is_the_config_refitted_on_the_whole_snapshot(
    rated_engine: Engine, settings: Settings
) -> None:
    _add_features(rated_engine)
    settings = _settings(settings)
    job = _run(rated_engine, settings, "fm-explicit")
    assert job.status == "succeeded", job.error
    assert job.metrics is not None
    n_ratings = job.snapshot["n_ratings"] if job.snapshot else 0
    assert job.metrics["refit"]["n_ratings"] == n_ratings
    assert job.metrics["n_train"] < n_ratings  # the gate saw the training slice only
    assert job.progress.phase == "refit"
    assert job.snapshot is not None
    assert job.snapshot["users_with_attributes"] == 30
    assert job.snapshot["items_with_features"] == 40
    with transaction(make_sessionmaker(rated_engine)) as session:
        version = get_active_version(session)
    assert version is not None
    offline = _offline(rated_engine, version.algorithm, version.config)
    users, items = ["u0", "u1", "u7", "u30"], ["i0", "i3", "i17", "i39"]
    rows = torch.as_tensor([offline.user_ids.index(u) for u in users])
    columns = torch.as_tensor([offline.item_ids.index(i) for i in items])
    expected = offline.score_users(rows)[:, columns]
    with TestClient(create_app(settings)) as client:
        for r, user in enumerate(users):
            reply = client.post("/scores", json={"user": user, "items": items})
            assert reply.status_code == 200, reply.text
            assert reply.json()["model_version"] == version.version
            served = torch.tensor([s["score"] for s in reply.json()["scores"]])
            assert torch.allclose(served, expected[r].to(served.dtype), atol=1e-4), (
                served,
                expected[r],
            )


def test_refit_can_be_turned_off(rated_engine: Engine, settings: Settings) -> None:
    settings = _settings(settings, refit_on_snapshot=False)
    job = _run(rated_engine, settings, "fm-explicit")
    assert job.status == "succeeded", job.error
    assert job.metrics is not None
    assert "refit" not in job.metrics
    assert job.progress.phase == "training"


def test_the_refit_takes_the_best_validation_epoch() -> None:
    model = create_model("fm-explicit", FM)
    assert refit_config(model)["epochs"] == FM["epochs"]
    model.best_epoch = 6  # type: ignore[attr-defined]
    assert refit_config(model)["epochs"] == 6
    assert refit_config(create_model("als-biased", {"epochs": 3}))["epochs"] == 3
