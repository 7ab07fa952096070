"""`POST /ratings`, a user's ratings and deletes, through the app with its lifespan running."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from service.db.tables import ratings, users


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(ratings)).scalar_one())


def all_ratings(client: TestClient, user: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        reply = client.get(f"/users/{user}/ratings", params=params)
        assert reply.status_code == 200, reply.text
        entries += reply.json()["items"]
        cursor = reply.json()["next_cursor"]
        if cursor is None:
            return entries


def test_single_rating_and_batch(client: TestClient) -> None:
    reply = client.post("/ratings", json={"user": "alice", "item": "tt1", "rating": 4.5})
    assert reply.status_code == 201
    assert reply.json() == {"inserted": 1, "updated": 0, "ignored": 0}
    batch = {
        "ratings": [
            {"user": "alice", "item": "tt1", "rating": 3, "timestamp": "2999-01-01"},
            {"user": "alice", "item": "tt2", "timestamp": 1_700_000_000},
            {"user": "bob", "item": "tt1", "rating": 5.0, "timestamp": "2024-05-01T14:00:00+02:00"},
        ]
    }
    # 2999 is too far in the future: the whole batch is refused
    reply = client.post("/ratings", json=batch)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["row"] == 0
    assert reply.json()["detail"][0]["field"] == "timestamp"
    batch["ratings"][0]["timestamp"] = datetime.now(UTC).isoformat()
    reply = client.post("/ratings", json=batch)
    assert reply.status_code == 201
    assert reply.json() == {"inserted": 2, "updated": 1, "ignored": 0}
    assert all_ratings(client, "bob") == [
        {"item": "tt1", "rating": 5.0, "timestamp": "2024-05-01T12:00:00Z"}
    ]
    alice = {entry["item"]: entry for entry in all_ratings(client, "alice")}
    assert alice["tt1"]["rating"] == 3.0
    assert alice["tt2"] == {"item": "tt2", "rating": None, "timestamp": "2023-11-14T22:13:20Z"}


def test_one_bad_row_in_a_thousand_stores_nothing(client: TestClient, engine: Engine) -> None:
    rows: list[dict[str, Any]] = [
        {"user": f"u{i % 37}", "item": f"i{i}", "rating": 1 + i % 5} for i in range(1000)
    ]
    rows[637]["rating"] = 7.5
    reply = client.post("/ratings", json={"ratings": rows})
    assert reply.status_code == 422
    assert reply.json() == {
        "error": "invalid_input",
        "detail": [
            {"row": 637, "field": "rating", "message": "must be between 0.5 and 5.0, got 7.5"}
        ],
        "error_count": 1,
    }
    assert count(engine) == 0


def test_ten_thousand_rows_stored_once_and_reposted_as_updates(
    client: TestClient, engine: Engine
) -> None:
    rows = [
        {"user": f"u{i % 100}", "item": f"i{i // 100}", "rating": 0.5 + (i % 10) / 2,
         "timestamp": 1_600_000_000 + i}
        for i in range(10_000)
    ]  # fmt: skip
    reply = client.post("/ratings", json={"ratings": rows})
    assert reply.status_code == 201, reply.text
    assert reply.json() == {"inserted": 10_000, "updated": 0, "ignored": 0}
    assert count(engine) == 10_000
    reply = client.post("/ratings", json={"ratings": rows})
    assert reply.json() == {"inserted": 0, "updated": 10_000, "ignored": 0}
    assert count(engine) == 10_000
    with engine.connect() as connection:
        versions = connection.execute(select(users.c.history_version)).scalars().all()
    assert sorted(set(versions)) == [2]


BAD_BODIES: list[tuple[str, object, str]] = [
    ("missing item", {"user": "u"}, "item"),
    ("empty user", {"user": "", "item": "i"}, "user"),
    ("long user", {"user": "x" * 129, "item": "i"}, "user"),
    ("control character", {"user": "a\nb", "item": "i"}, "user"),
    ("number as id", {"user": 5, "item": "i"}, "user"),
    ("rating as text", {"user": "u", "item": "i", "rating": "4"}, "rating"),
    ("rating as boolean", {"user": "u", "item": "i", "rating": True}, "rating"),
    ("rating above scale", {"user": "u", "item": "i", "rating": 5.5}, "rating"),
    ("rating below scale", {"user": "u", "item": "i", "rating": 0}, "rating"),
    ("rating not finite", {"user": "u", "item": "i", "rating": 1e400}, "rating"),
    ("bad timestamp", {"user": "u", "item": "i", "timestamp": "yesterday"}, "timestamp"),
    ("future timestamp", {"user": "u", "item": "i", "timestamp": 4_000_000_000}, "timestamp"),
    ("timestamp as list", {"user": "u", "item": "i", "timestamp": [1]}, "timestamp"),
    ("unknown field", {"user": "u", "item": "i", "score": 3}, "score"),
    ("row not an object", {"ratings": [{"user": "u", "item": "i"}, 3]}, ""),
    ("ratings not a list", {"ratings": {"user": "u"}}, "body"),
    ("empty batch", {"ratings": []}, "body"),
    ("extra top-level field", {"ratings": [], "x": 1}, "body"),
    ("body is a list", [{"user": "u", "item": "i"}], "body"),
    ("body is a string", "hello", "body"),
]


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in BAD_BODIES],
                         ids=[case[0] for case in BAD_BODIES])  # fmt: skip
def test_bad_input_is_422_and_changes_nothing(
    client: TestClient, engine: Engine, body: object, field: str
) -> None:
    client.post("/ratings", json={"user": "keep", "item": "this", "rating": 3})
    raw = json.dumps(body).replace("1e+400", "1e400")
    reply = client.post("/ratings", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_input"
    assert any(entry["field"] == field for entry in reply.json()["detail"]), reply.json()
    assert all(entry["message"] for entry in reply.json()["detail"])
    assert count(engine) == 1


@pytest.mark.parametrize("raw", [b"{", b"", b'{"user": "u", "item": "i",}', b"\xff\xfe", b"NaN?"])
def test_malformed_json_is_400(client: TestClient, engine: Engine, raw: bytes) -> None:
    reply = client.post("/ratings", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"] == "malformed_json"
    assert count(engine) == 0


def test_nan_literal_is_refused(client: TestClient, engine: Engine) -> None:
    raw = b'{"user": "u", "item": "i", "rating": NaN}'
    reply = client.post("/ratings", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert count(engine) == 0


def test_too_many_rows_and_too_large_bodies(client: TestClient, engine: Engine) -> None:
    rows = [{"user": "u", "item": f"i{i}"} for i in range(10_001)]
    reply = client.post("/ratings", json={"ratings": rows})
    assert reply.status_code == 422
    assert "at most 10000" in reply.json()["detail"][0]["message"]
    big = b'{"ratings": [' + b" " * (9 * 1024 * 1024) + b"]}"
    reply = client.post("/ratings", content=big, headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"

    def chunks() -> Any:
        yield b'{"ratings": ['
        for _ in range(9):
            yield b" " * (1024 * 1024)
        yield b"]}"

    # without a Content-Length the limit is enforced while the body streams in
    reply = client.post("/ratings", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert count(engine) == 0


def test_pagination_and_unknown_users(client: TestClient) -> None:
    rows = [{"user": "u", "item": f"i{i}", "rating": 3} for i in range(5)]
    client.post("/ratings", json={"ratings": rows})
    assert sorted(entry["item"] for entry in all_ratings(client, "u")) == [
        f"i{i}" for i in range(5)
    ]
    assert client.get("/users/nobody/ratings").status_code == 404
    assert client.get("/users/u/ratings", params={"limit": 0}).status_code == 422
    assert client.get("/users/u/ratings", params={"limit": "x"}).status_code == 422
    assert client.get("/users/u/ratings", params={"cursor": "garbage!"}).status_code == 422
    items_cursor = client.get("/items", params={"limit": 1}).json()["next_cursor"]
    assert client.get("/users/u/ratings", params={"cursor": items_cursor}).status_code == 422


def test_delete_rating_and_user(client: TestClient, engine: Engine) -> None:
    rows = [("Zoë", "a"), ("Zoë", "b"), ("x", "a")]
    client.post("/ratings", json={"ratings": [{"user": u, "item": i} for u, i in rows]})
    with engine.connect() as connection:
        query = select(users.c.history_version).where(users.c.external_id == "Zoë")
        before = connection.execute(query).scalar_one()
    assert client.delete("/users/Zoë/ratings/a").status_code == 204
    assert client.delete("/users/Zoë/ratings/a").status_code == 404
    assert client.delete("/users/Zoë/ratings/unknown").status_code == 404
    with engine.connect() as connection:
        assert connection.execute(query).scalar_one() == before + 1
    assert [entry["item"] for entry in all_ratings(client, "Zoë")] == ["b"]
    assert client.delete("/users/Zoë").status_code == 204
    assert client.get("/users/Zoë/ratings").status_code == 404
    assert client.delete("/users/Zoë").status_code == 404
    assert count(engine) == 1
    assert client.get("/items/a").status_code == 200


def test_unicode_ids_in_paths(client: TestClient) -> None:
    client.post("/ratings", json={"user": "用户 1", "item": "película/ñ", "rating": 4})
    reply = client.get("/users/用户 1/ratings")
    assert reply.status_code == 200
    assert reply.json()["items"][0]["item"] == "película/ñ"
