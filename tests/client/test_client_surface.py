"""`Client` and `AsyncClient` offer the same calls, documented, with checked options."""

from __future__ import annotations

import inspect

import pytest
from mfserve_client import AsyncClient, Client


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    """The public methods of a class and their signatures."""
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_both_clients_have_the_same_calls_and_parameters() -> None:
    blocking = public_methods(Client)
    asynchronous = public_methods(AsyncClient)
    assert set(blocking) - {"close"} == set(asynchronous) - {"aclose"}
    for name, signature in blocking.items():
        if name != "close":
            assert list(signature.parameters) == list(asynchronous[name].parameters), name
    assert len(blocking) >= 27


def test_every_public_call_has_a_docstring() -> None:
    for cls in (Client, AsyncClient):
        for name in public_methods(cls):
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "localhost:8000"}, "base_url"),
        ({"batch_size": 0}, "batch_size"),
        ({"page_size": 1001}, "page_size"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"base_url": "http://127.0.0.1:1", **options}
    with pytest.raises(ValueError, match=message):
        Client(**arguments)  # type: ignore[arg-type]


def test_the_api_key_is_a_bearer_token_and_the_base_url_loses_its_slash() -> None:
    with Client("http://127.0.0.1:1/", api_key="k") as api:
        request = api._http.build_request("GET", "/healthz")
    assert request.headers["Authorization"] == "Bearer k"
    assert str(request.url) == "http://127.0.0.1:1/healthz"
    with Client("http://127.0.0.1:1") as anonymous:
        assert "Authorization" not in anonymous._http.build_request("GET", "/x").headers
