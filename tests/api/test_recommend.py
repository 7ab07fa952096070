"""`GET /recommend/{user}`, `POST /recommend` and `POST /recommend/batch` (SQLite, PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.datastructures import QueryParams
from starlette.requests import Request

from service.api.serving_deps import query_args
from service.app import create_app
from service.config import Settings
from service.ml import ranking
from service.registry import ServedModel
from tests.api.serving_setup import (
    N_ITEMS,
    item_tags,
    seed_database,
    serve,
    serving_settings,
    train_served,
    user_history,
)


def _items(reply: dict[str, Any]) -> list[str]:
    return [entry["item"] for entry in reply["items"]]


def _offline_top(served: ServedModel, user: str, excluded: set[str], n: int) -> list[str]:
    model = served.model
    index = model.user_ids.index(user)
    assert index is not None
    scores = model.score_users(torch.tensor([index]))[0].clone()
    for item in excluded:
        scores[model.item_ids.index(item)] = -torch.inf
    top = torch.topk(scores, n).indices.tolist()
    return model.item_ids.ids_of(top)


def test_every_call_is_503_before_any_model(serving_client: TestClient) -> None:
    calls = [
        ("GET", "/recommend/u1", None),
        ("POST", "/recommend", {"history": [{"item": "i1", "rating": 4}]}),
        ("POST", "/recommend/batch", {"users": ["u1"]}),
        ("POST", "/scores", {"user": "u1", "items": ["i1"]}),
        ("POST", "/foldin", {"history": [{"item": "i1", "rating": 4}]}),
        ("GET", "/items/i1/similar", None),
    ]
    for method, path, body in calls:
        response = serving_client.request(method, path, json=body)
        assert response.status_code == 503, (method, path)
        assert response.json()["error"] == "no_model"


def test_trained_user_gets_stored_embedding_minus_rated_items(
    serving_client: TestClient, served: ServedModel
) -> None:
    rated, _ = user_history(serving_client, "u3")
    reply = serving_client.get("/recommend/u3?n=5").json()
    assert set(reply) == {"user", "model_version", "source", "items"}
    assert (reply["user"], reply["model_version"], reply["source"]) == ("u3", 1, "model")
    assert _items(reply) == _offline_top(served, "u3", set(rated), 5)
    scores = [entry["score"] for entry in reply["items"]]
    assert scores == sorted(scores, reverse=True)
    assert not set(rated) & set(_items(reply))
    assert serving_client.get("/recommend/u3").json()["items"].__len__() == 10  # default n


def test_exclude_rated_false_keeps_rated_items(
    serving_client: TestClient, served: ServedModel
) -> None:
    reply = serving_client.get("/recommend/u3?n=8&exclude_rated=false").json()
    assert _items(reply) == _offline_top(served, "u3", set(), 8)


def test_exclude_ids_are_left_out_and_unknown_ones_ignored(
    serving_client: TestClient, served: ServedModel
) -> None:
    first = _items(serving_client.get("/recommend/u3?n=3").json())
    reply = serving_client.get(
        f"/recommend/u3?n=3&exclude={first[0]}&exclude={first[1]}&exclude=no-such-item"
    ).json()
    rated, _ = user_history(serving_client, "u3")
    assert _items(reply) == _offline_top(served, "u3", {*rated, first[0], first[1]}, 3)


@pytest.mark.parametrize("limit", [0, 14])
def test_long_exclusion_lists_are_masked_before_topk_with_the_same_answer(
    serving_client: TestClient, served: ServedModel, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Rows leaving out more than EXCLUDED_AFTER_TOPK items are masked before `topk` (0: all
    of them; 14: some rows of the batch each way, about half the users rate 15 or more)."""
    monkeypatch.setattr(ranking, "EXCLUDED_AFTER_TOPK", limit)
    users = [f"u{u}" for u in range(12)]
    reply = serving_client.post("/recommend/batch", json={"users": users, "n": 6}).json()
    sizes = set()
    for user, result in zip(users, reply["results"], strict=True):
        rated, _ = user_history(serving_client, user)
        sizes.add(len(rated) > limit)
        assert _items(result) == _offline_top(served, user, set(rated), 6), user
    if limit:
        assert sizes == {True, False}  # both paths in one batch
    single = serving_client.get("/recommend/u3?n=4&exclude=i0").json()
    rated, _ = user_history(serving_client, "u3")
    assert _items(single) == _offline_top(served, "u3", {*rated, "i0"}, 4)


def _break_database(engine: Engine) -> None:
    """Make the next serving read fail at the driver: SQLite loses the users table (the
    history markers' first read); on PostgreSQL every other connection is terminated."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("ALTER TABLE users RENAME TO users_away")
        else:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def test_a_failed_serving_read_is_503_and_the_next_one_recovers(
    serving_client: TestClient, served: ServedModel, serving_db: Engine
) -> None:
    assert serving_client.get("/recommend/u3").status_code == 200  # connections are open
    _break_database(serving_db)
    failed = serving_client.get("/recommend/u3")
    assert failed.status_code == 503
    assert failed.json()["error"] == "unavailable"
    if serving_db.dialect.name == "sqlite":
        with serving_db.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE users_away RENAME TO users")
    reply = serving_client.get("/recommend/u3?n=5")
    assert reply.status_code == 200
    rated, _ = user_history(serving_client, "u3")
    assert _items(reply.json()) == _offline_top(served, "u3", set(rated), 5)


def test_tags_keep_only_items_carrying_every_tag(
    serving_client: TestClient, served: ServedModel
) -> None:
    rated, _ = user_history(serving_client, "u5")
    for tags in (["even"], ["odd"], ["even", "tri"]):
        query = "&".join(f"tag={t}" for t in tags)
        reply = serving_client.get(f"/recommend/u5?n=30&exclude_rated=false&{query}").json()
        expected = {f"i{j}" for j in range(N_ITEMS) if set(tags) <= set(item_tags(j))}
        assert set(_items(reply)) == expected, tags
    reply = serving_client.get("/recommend/u5?n=30&tag=even&tag=tri").json()
    expected = {f"i{j}" for j in range(N_ITEMS) if j % 6 == 0} - set(rated)
    assert set(_items(reply)) == expected
    assert serving_client.get("/recommend/u5?tag=no-such-tag").json()["items"] == []


HANG_GUARD_S = 120.0
"""Only stops a hung test; no refresh delay is promised by it."""


def test_tags_follow_item_metadata_changes(serving_client: TestClient, served: ServedModel) -> None:
    assert serving_client.get("/recommend/u5?tag=fresh").json()["items"] == []
    serving_client.put("/items/i4", json={"tags": ["fresh"]})
    serving_client.put("/items/i7", json={"tags": ["fresh"]})
    # the refresh loop runs every MFSERVE_ITEM_REFRESH_INTERVAL; the guard only stops a hang
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        reply = serving_client.get("/recommend/u5?tag=fresh&exclude_rated=false").json()
        if set(_items(reply)) == {"i4", "i7"} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert set(_items(reply)) == {"i4", "i7"}


def test_n_is_capped_and_checked(serving_client: TestClient, served: ServedModel) -> None:
    for bad in ("0", "-1", "1001", "abc"):
        response = serving_client.get(f"/recommend/u3?n={bad}")
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["field"] == "query.n"
    reply = serving_client.get("/recommend/u3?n=1000").json()  # more than there are items
    rated, _ = user_history(serving_client, "u3")
    assert len(reply["items"]) == N_ITEMS - len(rated)


def test_n_cap_is_configurable(settings: Settings, serving_db: Engine) -> None:
    with TestClient(create_app(serving_settings(settings, max_recommendations=5))) as client:
        seed_database(client)
        serve(client, train_served(serving_db))
        assert client.get("/recommend/u1?n=5").status_code == 200
        response = client.get("/recommend/u1?n=6")
        assert response.status_code == 422
        assert "MFSERVE_MAX_RECOMMENDATIONS" in response.json()["detail"][0]["message"]


def test_bad_query_values_are_422_naming_the_field(
    serving_client: TestClient, served: ServedModel
) -> None:
    response = serving_client.get("/recommend/u3?exclude_rated=maybe")
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "query.exclude_rated"
    long_id = "x" * 129
    response = serving_client.get(f"/recommend/{long_id}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "user"


@pytest.mark.parametrize(
    "query",
    [b"n=10", b"tag=a&tag=b%20c&exclude=x+y", b"a&b=&=c&&n=1&n=2", b"x=%E2%82%AC&y=%ZZ&z=%C3"],
)
def test_query_strings_parse_like_starlette(query: bytes) -> None:
    theirs: dict[str, list[str]] = {}
    for name, value in QueryParams(query).multi_items():
        theirs.setdefault(name, []).append(value)
    assert query_args(Request({"type": "http", "query_string": query})) == theirs


def test_encoded_and_repeated_query_values_reach_the_ranking(
    serving_client: TestClient, served: ServedModel
) -> None:
    base = _items(serving_client.get("/recommend/u5?n=5").json())
    encoded = f"%{ord(base[1][0]):X}{base[1][1:]}"  # the id's first character %-encoded
    query = f"n=9&exclude={base[0]}&exclude={encoded}&n=3"
    reply = serving_client.get(f"/recommend/u5?{query}").json()
    assert _items(reply) == base[2:5]
    response = serving_client.get("/recommend/u5?n=4&n=x")
    assert response.status_code == 422  # the last value counts, as in Starlette
    assert response.json()["detail"][0]["field"] == "query.n"


def test_recommend_route_is_documented_and_other_methods_are_405(
    serving_client: TestClient, served: ServedModel
) -> None:
    document = serving_client.get("/openapi.json").json()
    parameters = document["paths"]["/recommend/{user}"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"user", "n", "exclude_rated", "exclude", "tag"}
    for method in ("POST", "PUT", "DELETE"):
        response = serving_client.request(method, "/recommend/u3")
        assert response.status_code == 405, method
        assert response.json()["error"] == "method_not_allowed"
    assert serving_client.post("/recommend/batch", json={"users": ["u3"]}).status_code == 200


def test_unknown_user_gets_the_popular_fallback(
    serving_client: TestClient, served: ServedModel
) -> None:
    reply = serving_client.get("/recommend/stranger?n=4").json()
    assert (reply["user"], reply["source"], reply["model_version"]) == ("stranger", "popular", 1)
    fallback = served.fallback
    assert fallback is not None
    counts = fallback.item_parameters().bias
    expected = sorted(counts.tolist(), reverse=True)[:4]
    assert [entry["score"] for entry in reply["items"]] == expected


def test_popular_without_a_packed_fallback_ranks_by_item_bias(
    serving_client: TestClient, serving_db: Engine
) -> None:
    model = train_served(serving_db, fallback=False)
    serve(serving_client, model)
    reply = serving_client.get("/recommend/stranger?n=3").json()
    assert reply["source"] == "popular"
    params = model.model.item_parameters()
    baseline = params.bias + params.global_bias
    assert _items(reply) == model.model.item_ids.ids_of(torch.topk(baseline, 3).indices.tolist())


def test_new_ratings_are_excluded_and_folded_in_at_once(
    serving_client: TestClient, served: ServedModel
) -> None:
    """Acceptance 2: no retrain, and the very next call reflects the new ratings."""
    before = serving_client.get("/recommend/u3?n=3").json()
    assert before["source"] == "model"
    liked = before["items"][0]["item"]
    posted = serving_client.post("/ratings", json={"user": "u3", "item": liked, "rating": 1.0})
    assert posted.status_code == 201
    after = serving_client.get("/recommend/u3?n=3").json()
    assert after["source"] == "foldin"
    assert liked not in _items(after)
    # the list is the fold-in of the user's current history, scored by the model
    items, ratings = user_history(serving_client, "u3")
    model = served.model
    vector = model.fold_in(model.item_ids.indices(items), np.asarray(ratings, dtype=np.float32))
    scores = model.score_user_vector(vector).clone()
    scores[torch.as_tensor(model.item_ids.indices(items))] = -torch.inf
    expected = model.item_ids.ids_of(torch.topk(scores, 3).indices.tolist())
    assert _items(after) == expected
    for entry, score in zip(after["items"], torch.topk(scores, 3).values.tolist(), strict=True):
        assert entry["score"] == pytest.approx(score, abs=1e-5)


def test_a_new_user_is_folded_in_from_their_first_ratings(
    serving_client: TestClient, served: ServedModel
) -> None:
    ratings = [{"user": "newbie", "item": f"i{j}", "rating": 5.0} for j in (1, 2, 3)]
    serving_client.post("/ratings", json={"ratings": ratings})
    reply = serving_client.get("/recommend/newbie?n=5").json()
    assert reply["source"] == "foldin"
    assert not {"i1", "i2", "i3"} & set(_items(reply))
    anonymous = serving_client.post(
        "/recommend",
        json={"history": [{"item": f"i{j}", "rating": 5.0} for j in (1, 2, 3)], "n": 5},
    ).json()
    assert anonymous["items"] == reply["items"]


def test_a_user_with_only_unknown_items_gets_popular(
    serving_client: TestClient, served: ServedModel
) -> None:
    serving_client.post("/ratings", json={"user": "explorer", "item": "brand-new", "rating": 4})
    reply = serving_client.get("/recommend/explorer?n=3").json()
    assert reply["source"] == "popular"


def test_a_deleted_user_is_no_longer_served_their_embedding(
    serving_client: TestClient, served: ServedModel
) -> None:
    assert serving_client.delete("/users/u3").status_code in (200, 204)
    assert serving_client.get("/recommend/u3").json()["source"] == "popular"


@pytest.fixture
def mode_client(request: pytest.FixtureRequest, settings: Settings) -> Iterator[TestClient]:
    overrides = serving_settings(settings, user_embeddings=request.param)
    with TestClient(create_app(overrides)) as client:
        seed_database(client)
        yield client


@pytest.mark.parametrize("mode_client", ["foldin"], indirect=True)
def test_user_embeddings_foldin_always_folds_in(
    mode_client: TestClient, serving_db: Engine
) -> None:
    served = train_served(serving_db)
    serve(mode_client, served)
    reply = mode_client.get("/recommend/u3?n=3").json()
    assert reply["source"] == "foldin"
    items, ratings = user_history(mode_client, "u3")
    model = served.model
    vector = model.fold_in(model.item_ids.indices(items), np.asarray(ratings, dtype=np.float32))
    scores = model.score_user_vector(vector).clone()
    scores[torch.as_tensor(model.item_ids.indices(items))] = -torch.inf
    assert _items(reply) == model.item_ids.ids_of(torch.topk(scores, 3).indices.tolist())


@pytest.mark.parametrize("mode_client", ["stored"], indirect=True)
def test_user_embeddings_stored_prefers_the_embedding(
    mode_client: TestClient, serving_db: Engine
) -> None:
    served = train_served(serving_db)
    serve(mode_client, served)
    first = mode_client.get("/recommend/u3?n=3").json()
    mode_client.post("/ratings", json={"user": "u3", "item": first["items"][0]["item"]})
    reply = mode_client.get("/recommend/u3?n=3").json()
    assert reply["source"] == "model"  # still the stored embedding...
    assert first["items"][0]["item"] not in _items(reply)  # ...but the new item is excluded
    assert mode_client.get("/recommend/stranger").json()["source"] == "popular"


def test_without_a_snapshot_trained_users_keep_their_embedding(
    serving_client: TestClient, serving_db: Engine
) -> None:
    serve(serving_client, train_served(serving_db, with_snapshot=False))
    serving_client.post("/ratings", json={"user": "u3", "item": "i0", "rating": 2})
    assert serving_client.get("/recommend/u3").json()["source"] == "model"


# ----- POST /recommend --------------------------------------------------------------------
def test_anonymous_history_is_folded_in_and_excluded(
    serving_client: TestClient, served: ServedModel
) -> None:
    history = [{"item": "i1", "rating": 5}, {"item": "i2", "rating": 1.5}, {"item": "zz"}]
    reply = serving_client.post("/recommend", json={"history": history, "n": 4}).json()
    assert set(reply) == {"user", "model_version", "source", "items"}
    assert (reply["user"], reply["source"], reply["model_version"]) == (None, "foldin", 1)
    assert not {"i1", "i2"} & set(_items(reply))
    model = served.model
    vector = model.fold_in(model.item_ids.indices(["i1", "i2"]), np.array([5, 1.5], np.float32))
    scores = model.score_user_vector(vector).clone()
    scores[torch.as_tensor(model.item_ids.indices(["i1", "i2"]))] = -torch.inf
    assert _items(reply) == model.item_ids.ids_of(torch.topk(scores, 4).indices.tolist())
    kept = serving_client.post(
        "/recommend", json={"history": history, "n": 30, "exclude_rated": False}
    ).json()
    assert {"i1", "i2"} <= set(_items(kept))


def test_anonymous_options_exclude_and_tags(
    serving_client: TestClient, served: ServedModel
) -> None:
    body = {
        "history": [{"item": "i1", "rating": 4}],
        "n": 30,
        "exclude": ["i0", "i6"],
        "tags": ["even", "tri"],
    }
    reply = serving_client.post("/recommend", json=body).json()
    assert set(_items(reply)) == {"i12", "i18", "i24"}


def test_anonymous_history_without_known_items_gets_popular(
    serving_client: TestClient, served: ServedModel
) -> None:
    for history in ([], [{"item": "zz", "rating": 3}], [{"item": "i1"}]):
        # i1 without a rating: als-biased cannot fold in a bare history
        reply = serving_client.post("/recommend", json={"history": history, "n": 3})
        assert reply.status_code == 200
        assert reply.json()["source"] == "popular"
    reply = serving_client.post("/recommend", json={"history": [{"item": "i1"}], "n": 30})
    assert "i1" not in _items(reply.json())  # excluded even so


def test_anonymous_bad_input_is_4xx_naming_the_field(
    serving_client: TestClient, served: ServedModel
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"history": [{"item": "i1", "rating": 9}]}, "body.history.0.rating"),
        (
            {"history": [{"item": "i1", "rating": 4}, {"item": "i2", "rating": 0}]},
            "body.history.1.rating",
        ),
        ({"history": [{"item": "", "rating": 4}]}, "body.history.0.item"),
        ({"history": [{"item": "i1", "rating": "high"}]}, "body.history.0.rating"),
        ({"history": [{"rating": 4}]}, "body.history.0.item"),
        ({"history": [], "n": 0}, "body.n"),
        ({"history": [], "n": 5000}, "body.n"),
        ({"history": [], "nope": 1}, "body.nope"),
        ({"n": 3}, "body.history"),
        ({"history": [], "tags": "even"}, "body.tags"),
    ]
    for body, field in cases:
        response = serving_client.post("/recommend", json=body)
        assert response.status_code == 422, body
        assert field in {d["field"] for d in response.json()["detail"]}, (body, response.json())
    response = serving_client.post(
        "/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_history_length_is_capped(settings: Settings, serving_db: Engine) -> None:
    with TestClient(create_app(serving_settings(settings, max_history_items=2))) as client:
        seed_database(client)
        serve(client, train_served(serving_db))
        history = [{"item": f"i{j}", "rating": 3} for j in range(3)]
        for path, body in (
            ("/recommend", {"history": history}),
            ("/foldin", {"history": history}),
            ("/scores", {"history": history, "items": ["i1"]}),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 422, path
            assert response.json()["detail"][0]["field"] == "body.history"


# ----- POST /recommend/batch --------------------------------------------------------------
def test_batch_answers_each_user_like_get(serving_client: TestClient, served: ServedModel) -> None:
    serving_client.post("/ratings", json={"user": "u4", "item": "i0", "rating": 1})  # changed
    users = ["u3", "stranger", "u4", "u3"]
    reply = serving_client.post(
        "/recommend/batch", json={"users": users, "n": 4, "tags": ["odd"], "exclude": ["i1"]}
    ).json()
    assert set(reply) == {"model_version", "results"}
    assert reply["model_version"] == 1
    assert [r["user"] for r in reply["results"]] == users
    assert [r["source"] for r in reply["results"]] == ["model", "popular", "foldin", "model"]
    for result in reply["results"]:
        single = serving_client.get(f"/recommend/{result['user']}?n=4&tag=odd&exclude=i1").json()
        assert result["source"] == single["source"]
        for entry, other in zip(result["items"], single["items"], strict=True):
            assert entry["item"] == other["item"]
            assert entry["score"] == pytest.approx(other["score"], abs=1e-5)


def test_batch_bad_input_is_422(settings: Settings, serving_db: Engine) -> None:
    with TestClient(create_app(serving_settings(settings, max_batch_users=2))) as client:
        seed_database(client)
        serve(client, train_served(serving_db))
        for body, field in (
            ({"users": []}, "body.users"),
            ({"users": ["a", "b", "c"]}, "body.users"),
            ({"users": ["a"], "n": 0}, "body.n"),
            ({"users": ["a"], "exclude_rated": "sometimes"}, "body.exclude_rated"),
            ({"users": [""]}, "body.users.0"),
            ({}, "body.users"),
        ):
            response = client.post("/recommend/batch", json=body)
            assert response.status_code == 422, body
            assert response.json()["detail"][0]["field"] == field, response.json()


# ----- metrics ----------------------------------------------------------------------------
def test_metrics_count_routes_sources_and_the_served_version(
    serving_client: TestClient, served: ServedModel
) -> None:
    serving_client.get("/recommend/u3")
    serving_client.get("/recommend/stranger")
    serving_client.post("/recommend", json={"history": [{"item": "i1", "rating": 4}]})
    serving_client.get("/recommend/u3?n=0")
    serving_client.get("/no/such/path")
    text = serving_client.get("/metrics").text
    assert (
        'mfserve_request_duration_seconds_bucket{le="0.001",method="GET",route="/recommend/{user}"}'
        in text
    )
    assert 'mfserve_requests_total{method="GET",route="/recommend/{user}",status="422"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "mfserve_model_version 1.0" in text
    assert "mfserve_foldins_total 1.0" in text
    assert "mfserve_fallbacks_total 1.0" in text
    assert 'mfserve_users_scored_total{endpoint="recommend",source="model"} 1.0' in text
