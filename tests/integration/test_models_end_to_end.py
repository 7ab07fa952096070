"""Every catalog model end to end, through real processes, on SQLite and PostgreSQL.

One API process and one worker per backend, on small seeded ratings with a planted group
structure, Unicode ids and item tags posted over HTTP. For each model: retrain, check the gate's
decision, see the new version served, then load the same artifact offline and check that every
serving call agrees with the certified methods of the loaded model (tests/support/certified.py):

- `GET /recommend/{user}`, `POST /recommend` and `POST /recommend/batch` equal
  `Recommender.recommend` in order with scores within 1e-5, for stored, folded-in and fallback
  rows, with exclusions, tag filters (fallback rows too) and `n` larger than the catalog;
- `POST /scores`, `POST /foldin` and `GET /items/{item}/similar` equal `score_users`,
  `score_user_vector`, `fold_in` and `similar_items`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from service.db.migrations import upgrade_to_head
from service.ml.artifacts import read_artifact
from service.ml.catalog import MODEL_NAMES, model_entry
from tests.support.certified import (
    SCORE_TOLERANCE,
    Certified,
    Offline,
    assert_same_ranking,
    certified_list,
    fold_in,
    user_vector,
)
from tests.support.postgres import PostgresServer
from tests.support.server import run_api_process
from tests.support.worker import WorkerProcess, run_worker_process

pytestmark = pytest.mark.slow

TOKEN = "every-model-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HANG_GUARD_S = 180.0
"""Only stops a hung test (a job or a swap that never happens); no promise is timed."""

CONFIGS: dict[str, dict[str, Any]] = {
    "popular": {},
    "als-biased": {"embedding_size": 8, "epochs": 8},
    "als-implicit": {"embedding_size": 8, "epochs": 8},
    # a sigmoid range: the score transform, applied by the API after ranking, must match
    "flexmf-explicit": {
        "embedding_size": 8,
        "epochs": 30,
        "batch_size": 128,
        "learning_rate": 0.05,
        "sigmoid_range": True,
    },
    "flexmf-implicit": {"embedding_size": 8, "epochs": 12, "fold_in_regularization": 0.1},
    # the ML-100K defaults' L2 (0.2 per group) keeps this little data near the mean, and the
    # implicit-feedback sets of 90 users and 40 items overfit it (the gate fails them)
    "fm-explicit": {
        "embedding_size": 8,
        "epochs": 30,
        "batch_size": 128,
        "learning_rate": 0.05,
        "reg_user_id": 0.05,
        "reg_item_id": 0.05,
        "implicit_feedback": False,
        "item_implicit_feedback": False,
    },
    "fm-implicit": {"embedding_size": 8, "epochs": 10, "batch_size": 256},
}
"""Small configs that learn the planted data in a second or two (defaults otherwise)."""

N_USERS, N_ITEMS, GROUPS = 90, 40, 4
T0 = datetime(2025, 6, 1, tzinfo=UTC)


def user_id(u: int) -> str:
    """User ids, some of them non-ASCII."""
    return {0: "Zoë Ångström", 1: "用户一", 2: "u 2+%"}.get(u, f"u{u}")


def item_id(j: int) -> str:
    """Item ids, some of them non-ASCII."""
    return {0: "película ñ", 1: "映画", 2: "🎬 café"}.get(j, f"i{j}")


def item_tags(j: int) -> list[str]:
    """Each item's group and parity."""
    return [f"g{j % GROUPS}", "even" if j % 2 == 0 else "odd"]


def planted_ratings(seed: int = 17) -> list[dict[str, Any]]:
    """Users rate mostly their own group's items, ratings from a rank-3 model plus noise."""
    rng = np.random.default_rng(seed)
    user_f = rng.normal(size=(N_USERS, 3))
    item_f = rng.normal(size=(N_ITEMS, 3))
    item_bias = rng.normal(scale=0.5, size=N_ITEMS)
    user_bias = rng.normal(scale=0.4, size=N_USERS)
    rows = []
    for u in range(N_USERS):
        own = [j for j in range(N_ITEMS) if j % GROUPS == u % GROUPS]
        picked = set(rng.choice(own, size=7, replace=False).tolist())
        picked |= set(rng.choice(N_ITEMS, size=3, replace=False).tolist())
        for k, j in enumerate(sorted(picked)):
            raw = 3.3 + 0.7 * user_f[u] @ item_f[j] + item_bias[j] + user_bias[u]
            rating = float(np.clip(np.round(raw + rng.normal(scale=0.3)), 1, 5))
            stamp = (T0 + timedelta(hours=u, minutes=k)).isoformat()
            rows.append(
                {"user": user_id(u), "item": item_id(j), "rating": rating, "timestamp": stamp}
            )
    return rows


@dataclass
class Deployment:
    """The API client and worker of one backend, and where artifacts go."""

    backend: str
    api: httpx.Client
    artifact_dir: Path
    worker: WorkerProcess
    api_log: Any


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """API + worker on a fresh migrated database of one backend, seeded over HTTP."""
    backend = str(request.param)
    root = tmp_path_factory.mktemp(f"every-model-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{root / 'e2e.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database("every_model_e2e")
    upgrade_to_head(url)
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(root / "artifacts"),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_REGISTRY_POLL_INTERVAL": "0.2",
        "MFSERVE_ITEM_REFRESH_INTERVAL": "0.2",
        "MFSERVE_WORKER_THREADS": "1",
    }
    with ExitStack() as stack:
        api_process = stack.enter_context(
            run_api_process(url, env=env, startup_timeout=HANG_GUARD_S)
        )
        api = stack.enter_context(httpx.Client(base_url=api_process.base_url, timeout=60))
        response = api.post("/ratings", json={"ratings": planted_ratings()})
        assert response.status_code == 201, response.text
        for j in range(N_ITEMS):
            response = api.put(f"/items/{item_id(j)}", json={"tags": item_tags(j)})
            assert response.status_code in (200, 201), response.text
        worker = stack.enter_context(run_worker_process(url, env=env))
        yield Deployment(backend, api, root / "artifacts", worker, api_process.log)
    if backend == "postgresql":
        server.drop_database("every_model_e2e")


def _until(what: str, check: Any, deployment: Deployment) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = f"{deployment.worker.log()}\n{deployment.api_log()}"
            pytest.fail(f"hung waiting for {what}\n{logs}")
        time.sleep(0.05)


def _history(api: httpx.Client, user: str) -> list[tuple[str, float | None]]:
    reply = api.get(f"/users/{user}/ratings", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["next_cursor"] is None
    return [(entry["item"], entry["rating"]) for entry in body["items"]]


def _tagged(*tags: str) -> list[str]:
    return [item_id(j) for j in range(N_ITEMS) if set(tags) <= set(item_tags(j))]


def _retrain_and_serve(deployment: Deployment, name: str) -> tuple[dict[str, Any], Offline]:
    api = deployment.api
    config = {**CONFIGS[name], "device": "cpu"}
    accepted = api.post("/admin/retrain", headers=AUTH, json={"algorithm": name, "config": config})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]

    def ended() -> dict[str, Any] | None:
        job = api.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = _until(f"job {job_id}", ended, deployment)
    assert job["status"] == "succeeded", (job, deployment.worker.log())

    # the gate's decision: the model's metric against the baseline's, within the margin
    gate = job["metrics"]["gate"]
    explicit = model_entry(name).explicit
    assert gate["passed"] is True, gate
    assert gate["metric"] == ("rmse" if explicit else "ndcg@10")
    assert gate["value"] == job["metrics"]["validation"][gate["metric"]]
    assert gate["baseline"] == job["metrics"]["baseline"][gate["metric"]]
    if explicit:
        assert gate["value"] <= gate["baseline"] * (1 + gate["margin"]), gate
    else:
        assert gate["value"] >= gate["baseline"] * (1 - gate["margin"]), gate

    version = job["version"]
    _until(
        f"version {version} served",
        lambda: api.get("/readyz").json().get("model_version") == version,
        deployment,
    )
    active = api.get("/models/active", headers=AUTH).json()
    assert (active["version"], active["algorithm"], active["served"]) == (version, name, True)
    loaded = read_artifact(deployment.artifact_dir / active["artifact"], active["sha256"])
    assert loaded.model.name == name
    assert loaded.snapshot is not None
    fallback = loaded.fallback if loaded.fallback is not None else loaded.model
    return job, Offline(loaded.model, fallback)


def _check_lists(
    served: dict[str, Any], certified: Certified, n: int, version: int, user: str | None
) -> None:
    assert served["model_version"] == version
    assert served["user"] == user
    assert served["source"] == certified.source
    assert_same_ranking(served["items"], certified, n)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_from_retrain_to_served_equals_certified(
    deployment: Deployment, name: str
) -> None:
    api = deployment.api
    job, offline = _retrain_and_serve(deployment, name)
    version = job["version"]
    model = offline.model
    rank = MODEL_NAMES.index(name)

    # users: a trained one unchanged since the snapshot (stored vector), one who rated again
    # after it and one who is new (both folded in), and a stranger (the fallback)
    trained, changed = user_id(0), user_id(5)
    newcomer, stranger = f"newcomer-{name}-ø", f"stranger-{name}-ø"
    after = datetime.now(UTC).isoformat()
    fresh = [
        {"user": changed, "item": item_id(38), "rating": float(1 + rank % 5), "timestamp": after},
        *(
            {"user": newcomer, "item": item_id(j), "rating": r, "timestamp": after}
            for j, r in ((1, 5.0), (5, 4.0), (9, 2.0), (13, 4.5))
        ),
    ]
    assert api.post("/ratings", json={"ratings": fresh}).status_code == 201
    rated = {u: _history(api, u) for u in (trained, changed, newcomer)}
    rated_ids = {u: [item for item, _ in h] for u, h in rated.items()}

    def expected(user: str, excluded: list[str] = (), **kwargs: Any) -> Certified:  # type: ignore[assignment]
        if user == stranger:
            return certified_list(offline, history=[], excluded=excluded, **kwargs)
        if user == trained:
            return certified_list(
                offline, trained_user=user, excluded=[*rated_ids[user], *excluded], **kwargs
            )
        return certified_list(
            offline, history=rated[user], excluded=[*rated_ids[user], *excluded], **kwargs
        )

    # GET /recommend/{user}: stored, folded-in and fallback rows, exclusions, tags, n > catalog
    drop = [item_id(2), item_id(6), "no-such-item"]
    for user in (trained, changed, newcomer, stranger):
        reply = api.get(f"/recommend/{user}", params={"n": 7})
        assert reply.status_code == 200, reply.text
        _check_lists(reply.json(), expected(user), 7, version, user)
        reply = api.get(
            f"/recommend/{user}",
            params=[
                ("n", 5),
                ("exclude", drop[0]),
                ("exclude", drop[1]),
                ("exclude", drop[2]),
                ("tag", "even"),
            ],
        )
        _check_lists(reply.json(), expected(user, drop, allowed=_tagged("even")), 5, version, user)
        reply = api.get(f"/recommend/{user}", params={"n": 1000, "exclude_rated": "false"})
        if user == trained:
            all_of_them = certified_list(offline, trained_user=user)
        else:
            all_of_them = certified_list(offline, history=rated.get(user, []))
        _check_lists(reply.json(), all_of_them, 1000, version, user)
    assert expected(trained).source == "model"
    assert expected(changed).source == expected(newcomer).source == "foldin"
    assert expected(stranger).source == "popular"
    reply = api.get(f"/recommend/{stranger}", params=[("n", 1000), ("tag", "g1"), ("tag", "odd")])
    _check_lists(
        reply.json(), expected(stranger, allowed=_tagged("g1", "odd")), 1000, version, stranger
    )

    # POST /recommend: an anonymous history (its items left out), one the model cannot use
    history = [(item_id(3), 4.0), (item_id(7), 5.0), (item_id(11), 3.5), ("unknown-x", 2.0)]
    body = {
        "history": [{"item": i, "rating": r} for i, r in history],
        "n": 1000,
        "exclude": [item_id(15)],
        "tags": ["odd"],
    }
    reply = api.post("/recommend", json=body)
    assert reply.status_code == 200, reply.text
    anonymous = certified_list(
        offline,
        history=history,
        excluded=[i for i, _ in history] + [item_id(15)],
        allowed=_tagged("odd"),
    )
    _check_lists(reply.json(), anonymous, 1000, version, None)
    reply = api.post("/recommend", json={"history": [{"item": "unknown-y"}], "n": 4})
    _check_lists(
        reply.json(), certified_list(offline, history=[], excluded=["unknown-y"]), 4, version, None
    )
    # implicit interactions (no ratings): fold_in(items, None) where the model takes a bare
    # history (the implicit models; flexmf-explicit reads it as liked), the fallback where its
    # fold_in refuses one (als-biased)
    seen: list[tuple[str, float | None]] = [(item_id(j), None) for j in (4, 8, 12, 16)]
    reply = api.post("/recommend", json={"history": [{"item": i} for i, _ in seen], "n": 9})
    unrated = certified_list(offline, history=seen, excluded=[i for i, _ in seen])
    if not model.explicit:
        assert unrated.source == "foldin"
    _check_lists(reply.json(), unrated, 9, version, None)

    # POST /recommend/batch: every kind of row in one call, in request order
    users = [stranger, trained, newcomer, changed, stranger]
    for options in ({"n": 6}, {"n": 1000, "exclude": drop, "tags": ["g2"]}):
        reply = api.post("/recommend/batch", json={"users": users, **options})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert reply.json()["model_version"] == version
        assert [r["user"] for r in results] == users
        for user, result in zip(users, results, strict=True):
            allowed = _tagged(*options["tags"]) if "tags" in options else None
            certified = expected(user, options.get("exclude", []), allowed=allowed)
            _check_lists(result, certified, int(options["n"]), version, user)

    # POST /scores: a trained user, a folded-in user, a history; unknown items score null
    items = [item_id(j) for j in (0, 1, 2, 17, 30)] + ["no-such-item"]
    known = torch.as_tensor(model.item_ids.indices(items[:-1]))
    embedding, bias = user_vector(model, trained)
    cases = [
        ({"user": trained}, model.score_vectors(embedding[None], torch.tensor([bias]), known)[0]),
    ]
    for source in ({"user": newcomer}, {"history": [{"item": i, "rating": r} for i, r in history]}):
        vector = fold_in(model, rated[newcomer] if "user" in source else history)
        assert vector is not None
        cases.append((source, model.score_user_vector(vector, known)))
    for source, certified_scores in cases:
        reply = api.post("/scores", json={**source, "items": items})
        assert reply.status_code == 200, reply.text
        scored = reply.json()
        assert scored["model_version"] == version
        assert scored["unknown_items"] == ["no-such-item"]
        assert [s["item"] for s in scored["scores"]] == items
        assert scored["scores"][-1]["score"] is None
        np.testing.assert_allclose(
            [s["score"] for s in scored["scores"][:-1]],
            certified_scores.tolist(),
            rtol=0,
            atol=SCORE_TOLERANCE,
            err_msg=str(source),
        )

    # POST /foldin: the embedding and bias of `fold_in`
    reply = api.post("/foldin", json={"history": body["history"]})
    assert reply.status_code == 200, reply.text
    folded = reply.json()
    vector = fold_in(model, history)
    assert vector is not None
    assert folded["model_version"] == version
    assert folded["unknown_items"] == ["unknown-x"]
    np.testing.assert_allclose(folded["embedding"], vector.embedding.tolist(), atol=SCORE_TOLERANCE)
    if vector.has_bias:
        assert folded["bias"] == pytest.approx(vector.bias, abs=SCORE_TOLERANCE)
    else:
        assert folded["bias"] is None

    # GET /items/{item}/similar: `similar_items` (409 for a model without item factors)
    for item in (item_id(1), item_id(2), item_id(20)):
        reply = api.get(f"/items/{item}/similar", params={"n": 6})
        if model.embedding_size == 0:
            assert reply.status_code == 409, reply.text
            continue
        assert reply.status_code == 200, reply.text
        similar = reply.json()
        assert (similar["item"], similar["model_version"]) == (item, version)
        indices, sims = model.similar_items(model.item_ids.index(item), 6)  # type: ignore[arg-type]
        ids = model.item_ids.ids_of(indices.tolist())
        neighbours = Certified("similar", list(zip(ids, sims.tolist(), strict=True)))
        assert_same_ranking(similar["items"], neighbours, 6)
    assert api.get("/items/no-such-item/similar").status_code in (404, 409)
    reply = api.get(f"/items/{item_id(1)}")
    assert reply.status_code == 200
    assert (reply.json()["item"], reply.json()["tags"]) == (item_id(1), item_tags(1))
