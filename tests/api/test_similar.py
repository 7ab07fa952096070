"""`GET /items/{item}/similar` on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.registry import ServedModel
from tests.api.serving_setup import CountPopular, serve


def test_similar_items_equal_the_models_cosine_ranking(
    serving_client: TestClient, served: ServedModel
) -> None:
    reply = serving_client.get("/items/i4/similar?n=5").json()
    assert set(reply) == {"item", "model_version", "items"}
    assert (reply["item"], reply["model_version"]) == ("i4", 1)
    model = served.model
    index = model.item_ids.index("i4")
    assert index is not None
    indices, values = model.similar_items(index, 5)
    assert [e["item"] for e in reply["items"]] == model.item_ids.ids_of(indices.tolist())
    assert [e["score"] for e in reply["items"]] == pytest.approx(values.tolist(), abs=1e-5)
    assert "i4" not in [e["item"] for e in reply["items"]]
    assert all(-1 - 1e-6 <= e["score"] <= 1 + 1e-6 for e in reply["items"])


def test_n_defaults_to_10_and_is_capped(serving_client: TestClient, served: ServedModel) -> None:
    assert len(serving_client.get("/items/i4/similar").json()["items"]) == 10
    everything = serving_client.get("/items/i4/similar?n=1000").json()["items"]
    assert len(everything) == served.model.n_items - 1
    for bad in ("0", "1001", "x"):
        response = serving_client.get(f"/items/i4/similar?n={bad}")
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "query.n"


def test_unknown_items_are_404(serving_client: TestClient, served: ServedModel) -> None:
    serving_client.put("/items/late", json={"tags": []})  # in the database, not in the model
    for item in ("nope", "late"):
        response = serving_client.get(f"/items/{item}/similar")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert serving_client.get(f"/items/{'x' * 129}/similar").status_code == 422


def test_item_routes_still_answer(serving_client: TestClient, served: ServedModel) -> None:
    assert serving_client.get("/items/i4").json()["item"] == "i4"
    assert serving_client.get("/items?limit=2").status_code == 200


def test_a_model_without_factors_is_409(
    serving_client: TestClient, served: ServedModel, serving_db: Engine
) -> None:
    assert served.fallback is not None
    popular = ServedModel(
        version=2,
        algorithm="popular-test",
        sha256="1" * 64,
        model=served.fallback,
        fallback=None,
        snapshot=served.snapshot,
        loaded_at=served.loaded_at,
    )
    assert isinstance(popular.model, CountPopular)
    serve(serving_client, popular)
    response = serving_client.get("/items/i4/similar")
    assert response.status_code == 409
    # the other calls still answer from a factor-less model
    reply = serving_client.get("/recommend/u3?n=3").json()
    assert reply["model_version"] == 2
    assert len(reply["items"]) == 3
