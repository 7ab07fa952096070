"""`POST /foldin` on SQLite and PostgreSQL: offline equality, unknown items, nothing stored."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.registry import ServedModel
from tests.api.serving_setup import user_history


def test_training_users_history_folds_in_like_offline(
    serving_client: TestClient, served: ServedModel
) -> None:
    """Acceptance 3: the embedding equals the model's own fold-in of the same history."""
    model = served.model
    for user in ("u0", "u11", "u30"):
        items, ratings = user_history(serving_client, user)
        history = [{"item": i, "rating": r} for i, r in zip(items, ratings, strict=True)]
        reply = serving_client.post("/foldin", json={"history": history}).json()
        assert set(reply) == {"embedding", "bias", "model_version", "unknown_items"}
        offline = model.fold_in(model.item_ids.indices(items), np.asarray(ratings, np.float32))
        np.testing.assert_allclose(reply["embedding"], offline.embedding.numpy(), atol=1e-5)
        assert reply["bias"] == pytest.approx(offline.bias, abs=1e-5)
        assert (reply["model_version"], reply["unknown_items"]) == (1, [])


def test_unknown_items_are_listed_and_ignored(
    serving_client: TestClient, served: ServedModel
) -> None:
    serving_client.put("/items/late", json={"tags": []})  # in the database, not in the model
    history = [{"item": "i1", "rating": 4}, {"item": "zz", "rating": 2}, {"item": "late"}]
    reply = serving_client.post("/foldin", json={"history": history}).json()
    assert reply["unknown_items"] == ["zz", "late"]
    model = served.model
    offline = model.fold_in(model.item_ids.indices(["i1"]), np.array([4], np.float32))
    np.testing.assert_allclose(reply["embedding"], offline.embedding.numpy(), atol=1e-5)


def test_a_later_entry_for_the_same_item_wins(
    serving_client: TestClient, served: ServedModel
) -> None:
    twice = [{"item": "i1", "rating": 1}, {"item": "i2", "rating": 3}, {"item": "i1", "rating": 5}]
    once = [{"item": "i2", "rating": 3}, {"item": "i1", "rating": 5}]
    first = serving_client.post("/foldin", json={"history": twice}).json()
    second = serving_client.post("/foldin", json={"history": once}).json()
    np.testing.assert_allclose(first["embedding"], second["embedding"], atol=1e-6)


def test_nothing_known_gives_a_zero_vector(serving_client: TestClient, served: ServedModel) -> None:
    for history in ([], [{"item": "zz", "rating": 3}]):
        reply = serving_client.post("/foldin", json={"history": history}).json()
        assert reply["embedding"] == [0.0] * served.model.embedding_size
        assert reply["bias"] == 0.0


def test_nothing_is_stored(serving_client: TestClient, served: ServedModel) -> None:
    serving_client.post("/foldin", json={"history": [{"item": "i1", "rating": 4}]})
    assert serving_client.get("/users/anonymous/ratings").status_code == 404
    ratings = serving_client.get("/items?limit=1000").json()["items"]
    assert len(ratings) == 30  # no item created either


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.history"),
        ({"history": {"item": "i1"}}, "body.history"),
        ({"history": [{"item": "i1", "rating": 5.5}]}, "body.history.0.rating"),
        ({"history": [{"item": "i1", "rating": 0.4}]}, "body.history.0.rating"),
        ({"history": [{"item": "i1", "rating": None}, {"item": 3}]}, "body.history.1.item"),
        ({"history": [{"item": "i1", "extra": 1}]}, "body.history.0.extra"),
        ({"history": [], "user": "u1"}, "body.user"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(
    serving_client: TestClient, served: ServedModel, body: dict[str, Any], field: str
) -> None:
    response = serving_client.post("/foldin", json=body)
    assert response.status_code == 422, response.text
    assert field in {d["field"] for d in response.json()["detail"]}


def test_non_finite_ratings_are_refused(serving_client: TestClient, served: ServedModel) -> None:
    body = b'{"history": [{"item": "i1", "rating": NaN}]}'
    response = serving_client.post(
        "/foldin", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
