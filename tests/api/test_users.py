"""User attributes: PUT creates or replaces, GET reads, bad values are 422, deleting the user
deletes them (SQLite and PostgreSQL)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from service.db.tables import user_attributes


def test_put_get_and_replace(client: TestClient) -> None:
    body = {"attributes": {"age": 34, "country": "FR", "subscriber": True, "score": 0.5}}
    reply = client.put("/users/alice", json=body)
    assert reply.status_code == 201
    assert reply.json()["attributes"] == body["attributes"]
    assert client.get("/users/alice").json()["attributes"] == body["attributes"]
    reply = client.put("/users/alice", json={"attributes": {"age": 35}})
    assert reply.status_code == 200
    stored = client.get("/users/alice").json()
    assert stored["user"] == "alice"
    assert stored["attributes"] == {"age": 35}
    assert stored["updated_at"] is not None
    assert client.put("/users/alice", json={}).json()["attributes"] == {}


def test_users_created_by_ratings_have_no_attributes(client: TestClient) -> None:
    client.post("/ratings", json={"user": "u", "item": "i"})
    stored = client.get("/users/u").json()
    assert stored["attributes"] == {}
    assert stored["updated_at"] is None
    assert client.get("/users/nope").status_code == 404


def test_a_user_put_first_can_rate_later(client: TestClient) -> None:
    assert client.put("/users/bob", json={"attributes": {"age": 20}}).status_code == 201
    assert (
        client.post("/ratings", json={"user": "bob", "item": "i", "rating": 4}).status_code == 201
    )
    assert client.get("/users/bob/ratings").json()["items"][0]["item"] == "i"
    assert client.get("/users/bob").json()["attributes"] == {"age": 20}


def test_bad_attributes_are_422_naming_the_attribute(client: TestClient) -> None:
    cases = [
        ({"attributes": {"age": None}}, "'age'"),
        ({"attributes": {"tags": ["a"]}}, "'tags'"),
        ({"attributes": {"where": {"city": "Lyon"}}}, "'where'"),
        ({"attributes": {"bio": "x" * 1001}}, "'bio'"),
        ({"attributes": {"": 1}}, "names"),
        ({"attributes": {f"a{n}": n for n in range(101)}}, "attributes"),
        ({"attributes": []}, "attributes"),
        ({"age": 3}, "age"),
    ]
    for body, named in cases:
        reply = client.put("/users/x", json=body)
        assert reply.status_code == 422, body
        assert reply.json()["error"] == "invalid_input"
        assert named in str(reply.json()["detail"]), reply.json()
    nan = b'{"attributes": {"age": NaN}}'
    reply = client.put("/users/x", content=nan, headers={"content-type": "application/json"})
    assert reply.status_code in (400, 422)
    reply = client.put("/users/x", content=b"{", headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert client.put("/users/" + "x" * 129, json={}).status_code == 422
    assert client.get("/users/x").status_code == 404


def test_deleting_a_user_deletes_their_attributes(client: TestClient, engine: Engine) -> None:
    client.put("/users/carol", json={"attributes": {"age": 50}})
    client.post("/ratings", json={"user": "carol", "item": "i", "rating": 3})
    assert client.delete("/users/carol").status_code == 204
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(user_attributes)).scalar() == 0
    assert client.get("/users/carol").status_code == 404
    assert client.put("/users/carol", json={"attributes": {}}).status_code == 201
    assert client.get("/users/carol").json()["attributes"] == {}
