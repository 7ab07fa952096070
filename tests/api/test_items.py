"""Item metadata: PUT creates or replaces, GET reads, the list pages by cursor."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_put_get_and_replace(client: TestClient) -> None:
    body = {"title": "Heat", "tags": ["crime", "drama"], "attributes": {"year": 1995}}
    reply = client.put("/items/tt0113277", json=body)
    assert reply.status_code == 201
    assert reply.json()["title"] == "Heat"
    reply = client.put("/items/tt0113277", json={"title": "Heat (1995)"})
    assert reply.status_code == 200
    item = client.get("/items/tt0113277").json()
    assert item["item"] == "tt0113277"
    assert item["title"] == "Heat (1995)"
    assert item["tags"] == []
    assert item["attributes"] == {}


def test_items_created_by_ratings_have_empty_metadata(client: TestClient) -> None:
    client.post("/ratings", json={"user": "u", "item": "i"})
    assert client.get("/items/i").json()["title"] is None
    assert client.get("/items/nope").status_code == 404


def test_bad_metadata_is_422(client: TestClient) -> None:
    for body in ({"title": 5}, {"tags": "x"}, {"tags": [""]}, {"attributes": []}, {"extra": 1}):
        reply = client.put("/items/x", json=body)
        assert reply.status_code == 422, body
        assert reply.json()["error"] == "invalid_input"
    reply = client.put("/items/x", content=b"{", headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert client.put("/items/" + "x" * 129, json={}).status_code == 422
    assert client.get("/items/x").status_code == 404


def test_list_pages_through_every_item(client: TestClient) -> None:
    client.post("/ratings", json={"ratings": [{"user": "u", "item": f"i{n}"} for n in range(7)]})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/items", params=params).json()
        seen += [item["item"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"i{n}" for n in range(7)]
    assert len(seen) == 7
