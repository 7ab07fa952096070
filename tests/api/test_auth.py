"""API keys and scopes through TestClient with `MFSERVE_AUTH=keys`, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.app import create_app
from service.config import Settings, load_settings
from service.db.session import create_db_engine

TOKEN = "bootstrap-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
RATING = {"user": "alice", "item": "tt1", "rating": 4.0}
HANG_GUARD_S = 30.0
"""Only stops a hung test; no promise is timed."""


def keyed_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings with keys required and an admin token."""
    values = {
        **settings.model_dump(),
        "auth": "keys",
        "admin_token": TOKEN,
        "key_refresh_interval": 0.05,
        **overrides,
    }
    return load_settings(**values)


@pytest.fixture
def keyed(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings(settings))) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(client: TestClient, *scopes: str, name: str = "test") -> dict[str, Any]:
    reply = client.post("/admin/keys", headers=ADMIN, json={"name": name, "scopes": list(scopes)})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert set(body) == {"id", "name", "scopes", "created_at", "key"}
    return dict(body)


def calls(user: str = "alice") -> dict[str, list[tuple[str, str, dict[str, Any] | None]]]:
    """Routes by the scope they need: (method, path, JSON body)."""
    return {
        "ingest": [
            ("POST", "/ratings", RATING),
            ("PUT", "/items/tt1", {"title": "x"}),
            ("DELETE", f"/users/{user}/ratings/tt9", None),
            ("DELETE", "/users/nobody", None),
        ],
        "read": [
            ("GET", f"/users/{user}/ratings", None),
            ("GET", "/items/tt1", None),
            ("GET", "/items", None),
        ],
        "serve": [
            ("GET", f"/recommend/{user}", None),
            ("POST", "/recommend", {"history": [{"item": "tt1"}]}),
            ("POST", "/recommend/batch", {"users": [user]}),
            ("POST", "/scores", {"user": user, "items": ["tt1"]}),
            ("POST", "/foldin", {"history": [{"item": "tt1"}]}),
            ("GET", "/items/tt1/similar", None),
        ],
        "admin": [
            ("GET", "/admin/jobs", None),
            ("GET", "/models", None),
            ("GET", "/admin/keys", None),
        ],
    }


def call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.request(method, path, json=body, headers=headers)


def test_every_guarded_route_needs_a_key(keyed: TestClient) -> None:
    for scope, routes in calls().items():
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Basic eDp5"}, {"Authorization": "Bearer "}):
                reply = call(keyed, method, path, body, headers)
                assert reply.status_code == 401, (scope, method, path, reply.text)
                assert reply.json()["error"] == "unauthorized"
            reply = call(keyed, method, path, body, bearer("mfs_not-a-key"))
            assert reply.status_code == 403, (method, path)
            assert reply.json()["error"] == "forbidden"
    assert keyed.get("/users/alice/ratings", headers=ADMIN).status_code == 404  # nothing stored


def test_each_key_does_what_its_scopes_allow_and_nothing_else(keyed: TestClient) -> None:
    keys = {scope: create_key(keyed, scope)["key"] for scope in ("ingest", "read", "serve")}
    assert call(keyed, "POST", "/ratings", RATING, bearer(keys["ingest"])).status_code == 201
    for scope, routes in calls().items():
        for holder, key in keys.items():
            for method, path, body in routes:
                reply = call(keyed, method, path, body, bearer(key))
                if holder == scope:
                    # allowed: whatever the call itself answers (503 no_model, 404, 2xx)
                    assert reply.status_code not in (401, 403), (holder, method, path)
                else:
                    assert reply.status_code == 403, (holder, method, path, reply.text)
                    assert scope in reply.json()["detail"]


def test_a_serve_key_cannot_read_stored_ratings(keyed: TestClient) -> None:
    ingest = create_key(keyed, "ingest")["key"]
    serve = create_key(keyed, "serve")["key"]
    assert keyed.post("/ratings", json=RATING, headers=bearer(ingest)).status_code == 201
    reply = keyed.get("/users/alice/ratings", headers=bearer(serve))
    assert reply.status_code == 403
    assert reply.json() == {"error": "forbidden", "detail": "the key lacks the 'read' scope"}


def test_a_key_without_ingest_writes_nothing(keyed: TestClient) -> None:
    key = create_key(keyed, "read", "serve")["key"]
    for method, path, body in calls()["ingest"]:
        assert call(keyed, method, path, body, bearer(key)).status_code == 403
    assert keyed.get("/items", headers=bearer(key)).json()["items"] == []


def test_admin_keys_and_the_admin_token_carry_every_scope(keyed: TestClient) -> None:
    admin_key = create_key(keyed, "admin")["key"]
    for headers in (ADMIN, bearer(admin_key)):
        for routes in calls().values():
            for method, path, body in routes:
                reply = call(keyed, method, path, body, headers)
                assert reply.status_code not in (401, 403), (method, path, reply.text)


def test_revoked_key_is_refused_at_once(keyed: TestClient) -> None:
    created = create_key(keyed, "read", name="to revoke")
    assert keyed.get("/items", headers=bearer(created["key"])).status_code == 200
    assert keyed.delete(f"/admin/keys/{created['id']}", headers=ADMIN).status_code == 204
    reply = keyed.get("/items", headers=bearer(created["key"]))
    assert reply.status_code == 403
    assert keyed.delete(f"/admin/keys/{created['id']}", headers=ADMIN).status_code == 204
    assert keyed.delete("/admin/keys/999", headers=ADMIN).status_code == 404
    listed = keyed.get("/admin/keys", headers=ADMIN).json()["items"]
    assert [k["revoked_at"] is not None for k in listed] == [True]


def test_keys_are_stored_hashed_and_listed_without_secrets(
    keyed: TestClient, settings: Settings
) -> None:
    created = create_key(keyed, "serve", "read", name="shop")
    assert created["scopes"] == ["read", "serve"]
    assert created["key"].startswith("mfs_")
    assert len(created["key"]) > 40
    listed = keyed.get("/admin/keys", headers=ADMIN).json()["items"]
    assert len(listed) == 1
    assert "key" not in listed[0]
    assert "key_hash" not in listed[0]
    assert listed[0]["prefix"] == created["key"][:8]
    engine = create_db_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT * FROM api_keys")).all()
    finally:
        engine.dispose()
    stored = " ".join(str(value) for row in rows for value in row)
    assert created["key"] not in stored
    assert created["key"][8:] not in stored


def test_last_use_is_recorded_off_the_request_path(keyed: TestClient) -> None:
    created = create_key(keyed, "read")
    assert keyed.get("/admin/keys", headers=ADMIN).json()["items"][0]["last_used_at"] is None
    assert keyed.get("/items", headers=bearer(created["key"])).status_code == 200
    deadline = time.monotonic() + HANG_GUARD_S
    while keyed.get("/admin/keys", headers=ADMIN).json()["items"][0]["last_used_at"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "a\x00b", "scopes": ["read"]}, "name"),
        ({"scopes": ["read"]}, "name"),
    ],
)
def test_bad_key_requests_are_422_naming_the_field(
    keyed: TestClient, body: dict[str, Any], field: str
) -> None:
    reply = keyed.post("/admin/keys", headers=ADMIN, json=body)
    assert reply.status_code == 422
    assert field in reply.json()["detail"][0]["field"]


def test_only_admin_scope_manages_keys(keyed: TestClient) -> None:
    key = create_key(keyed, "ingest", "read", "serve")["key"]
    reply = keyed.post("/admin/keys", headers=bearer(key), json={"name": "x", "scopes": ["admin"]})
    assert reply.status_code == 403


def test_probes_and_metrics_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    ready = keyed.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["auth"] == "keys"
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200


def test_auth_off_opens_data_calls_but_not_the_admin_api(settings: Settings) -> None:
    with TestClient(create_app(keyed_settings(settings, auth="off"))) as client:
        assert client.get("/readyz").json()["auth"] == "off"
        assert client.post("/ratings", json=RATING).status_code == 201
        assert client.get("/users/alice/ratings").status_code == 200
        assert client.get("/admin/keys").status_code == 401
        assert client.get("/models", headers=bearer("wrong")).status_code == 403
        assert client.get("/admin/keys", headers=ADMIN).status_code == 200


def test_without_an_admin_token_admin_keys_still_work(settings: Settings) -> None:
    with TestClient(create_app(keyed_settings(settings))) as client:
        key = create_key(client, "admin")["key"]
    with TestClient(create_app(keyed_settings(settings, admin_token=None))) as client:
        assert client.get("/admin/keys", headers=ADMIN).status_code == 403
        assert client.get("/admin/keys", headers=bearer(key)).status_code == 200


def test_cli_creates_lists_and_revokes_keys(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from service.__main__ import main

    monkeypatch.setenv("MFSERVE_DATABASE_URL", settings.database_url)
    assert main(["keys", "create", "--name", "cli", "--scope", "read", "--scope", "serve"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["read", "serve"]
    with TestClient(create_app(keyed_settings(settings))) as client:
        assert client.get("/items", headers=bearer(created["key"])).status_code == 200
        assert main(["keys", "list"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [k["name"] for k in listed] == ["cli"]
        assert created["key"] not in json.dumps(listed)
        assert main(["keys", "revoke", str(created["id"])]) == 0
        capsys.readouterr()
        deadline = time.monotonic() + HANG_GUARD_S  # SQLite: the next re-read (0.05 s here)
        while client.get("/items", headers=bearer(created["key"])).status_code != 403:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert main(["keys", "revoke", "99999999999"]) == 2
    assert main(["keys", "create", "--name", "", "--scope", "read"]) == 2
