"""Inputs that gave a 500 or were wrongly accepted: each now gets a 4xx naming what is wrong and
changes nothing stored; non-JSON bodies get 415; request ids; CORS. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings, load_settings

TOKEN = "hardening-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HUGE = "99999999999999999999999"

JSON_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/ratings", {"user": "u", "item": "i", "rating": 4}),
    ("PUT", "/items/i", {"title": "x"}),
    ("POST", "/recommend", {"history": [{"item": "i"}]}),
    ("POST", "/recommend/batch", {"users": ["u"]}),
    ("POST", "/scores", {"user": "u", "items": ["i"]}),
    ("POST", "/foldin", {"history": [{"item": "i"}]}),
    ("POST", "/admin/retrain", {"algorithm": "popular"}),
    ("POST", "/admin/keys", {"name": "k", "scopes": ["read"]}),
]


@pytest.fixture
def app_client(settings: Settings) -> Any:
    values = {**settings.model_dump(), "admin_token": TOKEN}
    with TestClient(create_app(load_settings(**values))) as client:
        yield client


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_non_json_bodies_get_415_and_store_nothing(
    app_client: TestClient, content_type: str | None
) -> None:
    import json

    for method, path, body in JSON_ROUTES:
        headers = dict(ADMIN)
        if content_type is not None:
            headers["Content-Type"] = content_type
        reply = app_client.request(method, path, content=json.dumps(body), headers=headers)
        assert reply.status_code == 415, (method, path, reply.text)
        assert reply.json()["error"] == "unsupported_media_type"
    assert app_client.get("/items").json()["items"] == []
    assert app_client.get("/admin/jobs", headers=ADMIN).json()["items"] == []


def test_json_with_a_charset_is_accepted(app_client: TestClient) -> None:
    reply = app_client.post(
        "/ratings",
        content=b'{"user": "u", "item": "i"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert reply.status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("POST", f"/admin/models/{HUGE}/activate", "path.version"),
        ("GET", f"/models/{HUGE}", "path.version"),
        ("GET", "/admin/jobs/1141986893882261637308141733018599424", "path.job_id"),
        ("POST", "/admin/jobs/12610623368/cancel", "path.job_id"),
        ("GET", "/admin/jobs/2147483648", "path.job_id"),
        ("DELETE", f"/admin/keys/{HUGE}", "path.key_id"),
    ],
)
def test_ids_beyond_the_database_range_are_422_naming_the_field(
    app_client: TestClient, method: str, path: str, field: str
) -> None:
    reply = app_client.request(method, path, headers=ADMIN)
    assert reply.status_code == 422, reply.text
    assert [problem["field"] for problem in reply.json()["detail"]] == [field]


@pytest.mark.parametrize(
    "path", ["/items", "/users/u/ratings", "/admin/jobs", "/models"], ids=lambda p: p
)
def test_cursors_beyond_the_database_range_are_422(app_client: TestClient, path: str) -> None:
    import base64

    for kind in ("i", "r", "jobs", "models"):
        cursor = base64.urlsafe_b64encode(f"{kind}:{'9' * 30}".encode()).decode().rstrip("=")
        reply = app_client.get(path, params={"cursor": cursor}, headers=ADMIN)
        assert reply.status_code in (404, 422), reply.text
        if reply.status_code == 422:
            assert reply.json()["detail"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "a\x00b"}, "body.title"),
        ({"title": "ok", "tags": ["a\x00"]}, "body.tags.0"),
        ({"attributes": {"k\x00": 1}}, "body.attributes"),
        ({"attributes": {"k": "v\x00"}}, "body.attributes"),
        ({"attributes": {"k": [{"deep": "\x00"}]}}, "body.attributes"),
    ],
)
def test_nul_in_item_text_is_422_naming_the_field(
    app_client: TestClient, body: dict[str, Any], field: str
) -> None:
    assert app_client.put("/items/i", json={"title": "before"}).status_code == 201
    reply = app_client.put("/items/i", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["field"] == field
    assert app_client.get("/items/i").json()["title"] == "before"


def test_nan_in_attributes_is_422(app_client: TestClient) -> None:
    reply = app_client.put(
        "/items/i",
        content=b'{"attributes": {"x": NaN}}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 422
    assert app_client.get("/items/i").status_code == 404


def test_nul_in_ids_is_422_on_every_route(app_client: TestClient) -> None:
    assert app_client.post("/ratings", json={"user": "a\x00", "item": "i"}).status_code == 422
    assert app_client.get("/users/a%00/ratings").status_code == 422
    assert app_client.put("/items/a%00", json={}).status_code == 422
    reply = app_client.post("/admin/keys", headers=ADMIN, json={"name": "\x00", "scopes": ["read"]})
    assert reply.status_code == 422
    assert app_client.get("/items").json()["items"] == []


def test_a_get_of_recommend_batch_is_405_allowing_post(app_client: TestClient) -> None:
    reply = app_client.get("/recommend/batch")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "POST"
    reply = app_client.options("/items/x")
    assert reply.status_code == 405
    assert set(reply.headers["allow"].split(", ")) == {"GET", "PUT"}


def test_request_ids_are_returned_and_kept_from_the_client(app_client: TestClient) -> None:
    generated = app_client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert app_client.get("/healthz").headers["x-request-id"] != generated
    kept = app_client.get("/items", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    refused = app_client.get("/items", headers={"X-Request-ID": "bad id\t"})
    assert refused.headers["x-request-id"] != "bad id\t"


def test_cors_is_off_by_default_and_allows_configured_origins(
    app_client: TestClient, settings: Settings
) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    assert (
        "access-control-allow-origin"
        not in app_client.options("/ratings", headers=preflight).headers
    )
    values = {**settings.model_dump(), "cors_origins": "https://shop.example, https://b.example"}
    with TestClient(create_app(load_settings(**values))) as client:
        reply = client.options("/ratings", headers=preflight)
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.options("/ratings", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") is None


def test_a_500_names_its_request_id_in_the_reply_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi import FastAPI

    from service.api.request_id import RequestId
    from service.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestId)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/boom", headers={"X-Request-ID": "req-7"})
    assert reply.status_code == 500
    assert reply.json() == {
        "error": "internal_error",
        "detail": "internal server error",
        "request_id": "req-7",
    }
    assert reply.headers["x-request-id"] == "req-7"
    assert "req-7" in caplog.text
