"""Probes, the OpenAPI document, and refusing to start on an old schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import load_settings
from service.db.migrations import SchemaNotCurrentError, head_revision


def test_probes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    reply = client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ready"
    assert reply.json()["schema_revision"] == head_revision()


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    expected = {
        "/ratings", "/users/{user}/ratings", "/users/{user}/ratings/{item}", "/users/{user}",
        "/items/{item}", "/items", "/healthz", "/readyz",
    }  # fmt: skip
    assert expected <= set(document["paths"])
    assert "RatingBatchIn" in document["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_unknown_paths_and_methods_answer_in_the_error_shape(client: TestClient) -> None:
    reply = client.get("/nope")
    assert reply.status_code == 404
    assert reply.json()["error"] == "not_found"
    reply = client.get("/ratings")
    assert reply.status_code == 405
    assert reply.json()["error"] == "method_not_allowed"


def test_refuses_to_start_before_migrate(empty_database_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=empty_database_url, artifact_dir=tmp_path)
    with (
        pytest.raises(SchemaNotCurrentError, match="mfserve migrate"),
        TestClient(create_app(settings)),
    ):
        pass
