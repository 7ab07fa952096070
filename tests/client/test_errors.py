"""Error replies of the service turned into the client's exceptions, and the retry policy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from mfserve_client import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    InvalidInputError,
    NoModelError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RetryPolicy,
    ServiceUnavailableError,
)
from mfserve_client.errors import error_from_response


def reply(status: int, body: Any = None, text: str | None = None, **headers: str) -> httpx.Response:
    """A reply of the service to `GET /x`."""
    request = httpx.Request("GET", "http://service/x")
    if text is not None:
        return httpx.Response(status, text=text, request=request, headers=headers)
    return httpx.Response(status, json=body, request=request, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "malformed_json", BadRequestError),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (413, "payload_too_large", PayloadTooLargeError),
        (422, "invalid_input", InvalidInputError),
        (500, "internal_error", InternalServerError),
        (502, "http_error", InternalServerError),
        (503, "unavailable", ServiceUnavailableError),
        (503, "no_model", NoModelError),
        (405, "method_not_allowed", APIStatusError),
    ],
)
def test_each_status_has_its_exception(status: int, code: str, kind: type[Exception]) -> None:
    error = error_from_response(reply(status, {"error": code, "detail": "why"}))
    assert type(error) is kind
    assert (error.status_code, error.code, error.detail) == (status, code, "why")
    assert str(error) == f"GET /x -> {status} {code}: why"


def test_a_reply_that_is_not_json_keeps_its_text() -> None:
    error = error_from_response(reply(502, text="Bad Gateway"))
    assert isinstance(error, InternalServerError)
    assert (error.code, error.detail) == ("http_error", "Bad Gateway")


def test_a_422_carries_its_rows_and_can_be_renumbered() -> None:
    body = {
        "error": "invalid_input",
        "detail": [
            {"row": 1, "field": "rating", "message": "too high"},
            {"row": 1, "field": "item", "message": "empty"},
            {"field": "body", "message": "no rows"},
        ],
        "error_count": 120,
    }
    error = error_from_response(reply(422, body))
    assert isinstance(error, InvalidInputError)
    assert error.error_count == 120
    assert [e.field for e in error.rows[1]] == ["rating", "item"]
    error.shift_rows(50)
    assert sorted(error.rows) == [51]
    assert error.errors[2].row is None
    assert str(error) == (
        "GET /x -> 422 invalid_input: row 51 rating: too high; row 51 item: empty; "
        "body: no rows (and 117 more)"
    )


def test_backoff_grows_is_capped_and_follows_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, backoff=0.1, max_backoff=0.5)
    for retry, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        assert base / 2 <= policy.delay(retry) <= base
    assert policy.delay(1, reply(503, {}, **{"Retry-After": "0.3"})) == 0.3
    assert policy.delay(1, reply(503, {}, **{"Retry-After": "60"})) == 0.5
    assert policy.delay(1, reply(503, {}, **{"Retry-After": "Wed, 21 Oct 2015"})) <= 0.1


def test_only_idempotent_calls_retry_and_only_503_and_connection_failures() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry_status(True, 1, 503)
    assert policy.should_retry_status(True, 2, 503)
    assert not policy.should_retry_status(True, 3, 503)  # retries used up
    assert not policy.should_retry_status(False, 1, 503)
    assert not any(policy.should_retry_status(True, 1, s) for s in (500, 502, 504, 429, 404))
    refused = httpx.ConnectError("refused")
    assert policy.should_retry_error(True, 1, refused)
    assert policy.should_retry_error(True, 1, httpx.RemoteProtocolError("closed"))
    assert not policy.should_retry_error(False, 1, refused)
    assert not policy.should_retry_error(True, 1, httpx.ReadTimeout("slow"))
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
