"""The hot routes build their JSON by hand (orjson); what they send must be what the OpenAPI
document promises: every reply validates against its documented schema and has exactly its
fields. On a served model, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from fastapi.testclient import TestClient

from service.registry import ServedModel


def _check(document: dict[str, Any], model: str, reply: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{model}", "components": document["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(reply)
    declared = set(document["components"]["schemas"][model]["properties"])
    assert set(reply) == declared, (model, set(reply) ^ declared)


def _documented(document: dict[str, Any], path: str, method: str, status: str) -> str:
    content = document["paths"][path][method]["responses"][status]["content"]
    return str(content["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


def test_serving_replies_match_their_documented_schemas(
    serving_client: TestClient, served: ServedModel
) -> None:
    document = serving_client.get("/openapi.json").json()
    calls = [
        ("get", "/recommend/{user}", "/recommend/u1?n=3", None),
        ("get", "/recommend/{user}", "/recommend/newcomer?n=3", None),
        ("post", "/recommend", "/recommend", {"history": [{"item": "i1", "rating": 4}], "n": 2}),
        ("post", "/recommend/batch", "/recommend/batch", {"users": ["u1", "x"], "n": 2}),
        ("post", "/scores", "/scores", {"user": "u1", "items": ["i1", "nope"]}),
        ("post", "/foldin", "/foldin", {"history": [{"item": "i1", "rating": 5}]}),
        ("get", "/items/{item}/similar", "/items/i1/similar?n=3", None),
    ]
    for method, path, url, body in calls:
        reply = serving_client.request(method.upper(), url, json=body)
        assert reply.status_code == 200, (url, reply.text)
        model = _documented(document, path, method, "200")
        _check(document, model, reply.json())
        if model == "BatchRecommendationOut":
            for result in reply.json()["results"]:
                _check(document, "RecommendationOut", result)


def test_error_replies_match_the_documented_error_shape(
    serving_client: TestClient, served: ServedModel
) -> None:
    document = serving_client.get("/openapi.json").json()
    for method, url, body, status in [
        ("GET", "/recommend/u1?n=0", None, "422"),
        ("POST", "/scores", {"items": ["i1"]}, "422"),
        ("GET", "/items/no-such-item/similar", None, "404"),
        ("GET", "/users/nobody/ratings", None, "404"),
    ]:
        reply = serving_client.request(method, url, json=body)
        assert reply.status_code == int(status), reply.text
        schema = {"$ref": "#/components/schemas/Error", "components": document["components"]}
        jsonschema_rs.Draft202012Validator(schema).validate(reply.json())
