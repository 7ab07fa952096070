"""`POST /scores` on SQLite and PostgreSQL: request order, offline equality, unknown items."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.registry import ServedModel
from tests.api.serving_setup import N_ITEMS, user_history

ITEMS = ["i7", "nope", "i0", "i7", "i28", "i29", "other"]


def test_user_scores_equal_offline_scores(serving_client: TestClient, served: ServedModel) -> None:
    """Acceptance 3: a trained, unchanged user is scored with the stored embedding."""
    reply = serving_client.post("/scores", json={"user": "u3", "items": ITEMS}).json()
    assert set(reply) == {"model_version", "scores", "unknown_items"}
    assert reply["model_version"] == 1
    assert [entry["item"] for entry in reply["scores"]] == ITEMS
    model = served.model
    known = [item for item in ITEMS if item in model.item_ids]
    index = model.user_ids.index("u3")
    assert index is not None
    offline = model.score_users(
        torch.tensor([index]), torch.as_tensor(model.item_ids.indices(known))
    )[0].tolist()
    expected = dict(zip(known, offline, strict=True))
    for entry in reply["scores"]:
        if entry["item"] in expected:
            assert entry["score"] == pytest.approx(expected[entry["item"]], abs=1e-5)
        else:
            assert entry["score"] is None
    assert reply["unknown_items"] == ["nope", "other"]  # listed once each, in request order


def test_all_items_match_offline_scores(serving_client: TestClient, served: ServedModel) -> None:
    model = served.model
    items = model.item_ids.ids
    for user in ("u0", "u17", "u39"):
        reply = serving_client.post("/scores", json={"user": user, "items": items}).json()
        index = model.user_ids.index(user)
        assert index is not None
        offline = model.score_users(torch.tensor([index]))[0].numpy()
        online = np.array([entry["score"] for entry in reply["scores"]])
        np.testing.assert_allclose(online, offline, atol=1e-5)


def test_changed_user_is_scored_by_fold_in(serving_client: TestClient, served: ServedModel) -> None:
    serving_client.post("/ratings", json={"user": "u3", "item": "i0", "rating": 0.5})
    reply = serving_client.post("/scores", json={"user": "u3", "items": ["i1", "i2"]}).json()
    items, ratings = user_history(serving_client, "u3")
    model = served.model
    vector = model.fold_in(model.item_ids.indices(items), np.asarray(ratings, dtype=np.float32))
    offline = model.score_user_vector(vector, torch.as_tensor(model.item_ids.indices(["i1", "i2"])))
    assert [e["score"] for e in reply["scores"]] == pytest.approx(offline.tolist(), abs=1e-5)


def test_history_scores_equal_offline_fold_in_scores(
    serving_client: TestClient, served: ServedModel
) -> None:
    history = [{"item": "i1", "rating": 4.5}, {"item": "i5", "rating": 2}, {"item": "zz"}]
    reply = serving_client.post("/scores", json={"history": history, "items": ["i3", "i9"]})
    assert reply.status_code == 200
    model = served.model
    vector = model.fold_in(model.item_ids.indices(["i1", "i5"]), np.array([4.5, 2], np.float32))
    offline = model.score_user_vector(vector, torch.as_tensor(model.item_ids.indices(["i3", "i9"])))
    scores = [e["score"] for e in reply.json()["scores"]]
    assert scores == pytest.approx(offline.tolist(), abs=1e-5)


def test_unknown_user_is_scored_by_item_biases(
    serving_client: TestClient, served: ServedModel
) -> None:
    reply = serving_client.post("/scores", json={"user": "stranger", "items": ["i1"]}).json()
    params = served.model.item_parameters()
    index = served.model.item_ids.index("i1")
    assert index is not None
    baseline = float(params.bias[index]) + params.global_bias
    assert reply["scores"][0]["score"] == pytest.approx(baseline, abs=1e-5)


def test_scores_are_predicted_ratings_for_explicit_models(
    serving_client: TestClient, served: ServedModel
) -> None:
    items = [f"i{j}" for j in range(N_ITEMS - 1)]
    reply = serving_client.post("/scores", json={"user": "u3", "items": items}).json()
    scores = [e["score"] for e in reply["scores"]]
    assert min(scores) > 0  # ratings, around the 1..5 scale
    assert max(scores) < 7


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": ["i1"]}, "body.user"),
        ({"user": "u1", "history": [], "items": ["i1"]}, "body.user"),
        ({"user": "u1"}, "body.items"),
        ({"user": "u1", "items": []}, "body.items"),
        ({"user": "u1", "items": "i1"}, "body.items"),
        ({"user": "", "items": ["i1"]}, "body.user"),
        ({"user": "u1", "items": [""]}, "body.items.0"),
        ({"history": [{"item": "i1", "rating": 7}], "items": ["i1"]}, "body.history.0.rating"),
        ({"user": "u1", "items": ["i1"], "n": 3}, "body.n"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(
    serving_client: TestClient, served: ServedModel, body: dict[str, Any], field: str
) -> None:
    response = serving_client.post("/scores", json=body)
    assert response.status_code == 422, response.text
    assert field in {d["field"] for d in response.json()["detail"]}


def test_item_count_is_capped(serving_client: TestClient, served: ServedModel) -> None:
    items = ["i1"] * 10_001
    response = serving_client.post("/scores", json={"user": "u1", "items": items})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "body.items"


BODIES: list[tuple[bytes, dict[str, str]]] = [
    (b'{"user": "u3", "items": ["i1", "nope", "i2"]}', {"content-type": "application/json"}),
    (b'{"user": "u3", "items": ["i1"]}', {"content-type": "application/vnd.mf+json; charset=x"}),
    (b'{"user": "u3", "items": ["i1"]}', {"content-type": "text/plain"}),
    (b'{"user": "u3", "items": ["i1"]}', {}),
    (b"", {"content-type": "application/json"}),
    (b"{not json", {"content-type": "application/json"}),
    (b'"\xff"', {"content-type": "application/json"}),
    (b"[" * 100_000, {"content-type": "application/json"}),
    (b"[1, 2]", {"content-type": "application/json"}),
    (b'{"user": "u3", "items": ["i1"], "n": 3}', {"content-type": "application/json"}),
    (b'{"user": 7, "items": [""], "history": [{"item": "i1", "rating": NaN}]}', {}),
    (
        b'{"history": [{"item": "i1", "rating": NaN}], "items": ["i1"]}',
        {"content-type": "application/json"},
    ),
]


def test_the_plain_route_answers_every_body_as_the_documented_route(
    serving_client: TestClient, served: ServedModel
) -> None:
    """`POST /scores` is served by a plain route in front of its FastAPI route (which stays
    for the OpenAPI document): both answer alike, good bodies and bad ones."""
    routes = serving_client.app.router.routes  # type: ignore[attr-defined]
    plain = [r for r in routes if getattr(r, "path", None) == "/scores" and not r.include_in_schema]
    assert len(plain) == 1
    answers = [serving_client.post("/scores", content=body, headers=h) for body, h in BODIES]
    routes.remove(plain[0])
    try:
        for (body, headers), answer in zip(BODIES, answers, strict=True):
            documented = serving_client.post("/scores", content=body, headers=headers)
            assert answer.status_code == documented.status_code, body[:60]
            assert answer.json() == documented.json(), body[:60]
    finally:
        routes.insert(0, plain[0])
    # a body that is not application/json (a +json type, text/plain, none) is refused with 415
    # in front of both routes
    expected = [200, 415, 415, 415, 422, 400, 400, 400, 422, 422, 415, 422]
    assert [a.status_code for a in answers] == expected
