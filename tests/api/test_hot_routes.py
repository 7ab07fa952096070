"""`POST /ratings` served in front of the middleware stack keeps the stack's rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api import ratings
from service.app import create_app
from service.config import Settings, load_settings


def test_replies_carry_request_ids_and_are_counted(client: TestClient) -> None:
    stored = client.post("/ratings", json={"user": "u", "item": "i", "rating": 4})
    assert stored.status_code == 201
    assert stored.headers["content-type"] == "application/json"
    assert len(stored.headers["x-request-id"]) == 32
    again = client.post("/ratings", json={"user": "u", "item": "j"})
    assert again.headers["x-request-id"] != stored.headers["x-request-id"]
    kept = client.post(
        "/ratings", json={"user": "u", "item": "i", "rating": 9}, headers={"X-Request-ID": "t-1"}
    )
    assert kept.status_code == 422
    assert kept.headers["x-request-id"] == "t-1"
    assert kept.json()["detail"][0]["field"] == "rating"
    text = client.get("/metrics").text
    assert 'mfserve_requests_total{method="POST",route="/ratings",status="201"} 2.0' in text
    assert 'mfserve_requests_total{method="POST",route="/ratings",status="422"} 1.0' in text


def test_a_streamed_body_over_the_limit_is_413(settings: Settings) -> None:
    small = load_settings(**{**settings.model_dump(), "max_body_bytes": 1024})
    chunks = [b'{"ratings": [', b" " * 2000, b"]}"]

    def body() -> Iterator[bytes]:
        yield from chunks

    with TestClient(create_app(small)) as client:
        reply = client.post(
            "/ratings", content=body(), headers={"content-type": "application/json"}
        )
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"


def test_a_bug_is_a_500_naming_the_request_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ratings, "parse_payload", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        reply = client.post(
            "/ratings", json={"user": "u", "item": "i"}, headers={"X-Request-ID": "r-9"}
        )
    assert reply.status_code == 500
    assert reply.json() == {
        "error": "internal_error",
        "detail": "internal server error",
        "request_id": "r-9",
    }
    assert reply.headers.get_list("x-request-id") == ["r-9"]
    assert "r-9" in caplog.text


def test_the_plain_serving_routes_keep_the_stack_rules(client: TestClient) -> None:
    recommended = client.get("/recommend/u?n=3", headers={"X-Request-ID": "r-1"})
    assert recommended.status_code == 503  # served in front of the stack, no model yet
    assert recommended.json()["error"] == "no_model"
    assert recommended.headers.get_list("x-request-id") == ["r-1"]
    bad_n = client.get("/recommend/u?n=x")
    assert bad_n.status_code == 422
    assert len(bad_n.headers["x-request-id"]) == 32
    scored = client.post("/scores", json={"user": "u", "items": ["i"]})
    assert scored.status_code == 503
    not_json = client.post("/scores", content=b"{}", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415
    assert client.post("/recommend/u").status_code == 405  # the router's answer
    assert client.get("/recommend/batch").status_code == 405
    text = client.get("/metrics").text
    assert 'mfserve_requests_total{method="GET",route="/recommend/{user}",status="503"} 1.0' in text
    assert 'mfserve_requests_total{method="GET",route="/recommend/{user}",status="422"} 1.0' in text
    assert 'mfserve_requests_total{method="POST",route="/scores",status="415"} 1.0' in text


def test_the_hot_routes_answer_cors_requests_in_front_of_fastapis_layers(
    settings: Settings,
) -> None:
    values = {**settings.model_dump(), "cors_origins": "https://shop.example"}
    origin = {"Origin": "https://shop.example"}
    with TestClient(create_app(load_settings(**values))) as client:
        recommended = client.get("/recommend/u?n=3", headers=origin)
        scored = client.post("/scores", json={"user": "u", "items": ["i"]}, headers=origin)
        stored = client.post("/ratings", json={"user": "u", "item": "i"}, headers=origin)
        other = client.get("/healthz", headers=origin)
    assert [recommended.status_code, scored.status_code, stored.status_code] == [503, 503, 201]
    for reply in (recommended, scored, stored, other):
        assert reply.headers["access-control-allow-origin"] == "https://shop.example"
        assert len(reply.headers["x-request-id"]) == 32
