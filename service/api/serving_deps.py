"""What the serving routers share: the serving runtime of the request and JSON replies."""

from __future__ import annotations

import email.message
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar, cast
from urllib.parse import unquote_plus

import orjson
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.deps import checked_id
from service.api.serving_schemas import HistoryEntry
from service.api.state import ServiceState
from service.config import Settings
from service.errors import InvalidInputError
from service.recommend import History, Serving, read_history


async def get_runtime(request: Request) -> Serving:
    """The serving runtime the lifespan built.

    Async on purpose, like every dependency of the serving routes: FastAPI runs plain `def`
    dependencies in the thread pool, a hop that costs more than a whole recommendation.
    """
    return runtime_of(request)


RuntimeDep = Annotated[Serving, Depends(get_runtime)]


def runtime_of(request: Request) -> Serving:
    """The serving runtime of a request, read directly (no dependency resolution)."""
    return cast(ServiceState, request.state.service).serving


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


QueryArgs = dict[str, list[str]]
"""A request's query parameters by name, every value of a repeated name in order."""


def query_args(request: Request) -> QueryArgs:
    """The request's query parameters, parsed like Starlette's `request.query_params`
    (`&`-separated, `+` and `%XX` decoded as UTF-8, blank values kept).

    A plain query string such as `n=10` needs no decoding and is split directly: Starlette's
    parser costs as much as the rest of the parameter handling.
    """
    raw: bytes = request.scope["query_string"]
    args: QueryArgs = {}
    if not raw:
        return args
    text = raw.decode("latin-1")
    encoded = "%" in text or "+" in text
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if encoded:
            name = unquote_plus(name, errors="replace")
            value = unquote_plus(value, errors="replace")
        args.setdefault(name, []).append(value)
    return args


def _last(args: QueryArgs, name: str) -> str | None:
    values = args.get(name)
    return None if values is None else values[-1]


def query_int(args: QueryArgs, name: str, default: int) -> int:
    """An integer query parameter (422 naming it when it is not one)."""
    raw = _last(args, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInputError(
            [{"field": f"query.{name}", "message": "must be an integer"}]
        ) from None


def query_bool(args: QueryArgs, name: str, default: bool) -> bool:
    """A boolean query parameter: true/false, 1/0, yes/no, on/off (422 naming it otherwise)."""
    raw = _last(args, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidInputError([{"field": f"query.{name}", "message": "must be a boolean"}])


def query_ids(args: QueryArgs, name: str) -> tuple[str, ...]:
    """A repeatable query parameter of ids (each checked like ids in a rating)."""
    return tuple(checked_id(value, f"query.{name}") for value in args.get(name, ()))


def query_doc(
    name: str, schema: dict[str, Any], description: str, where: str = "query"
) -> dict[str, Any]:
    """An OpenAPI parameter object, for parameters parsed by hand."""
    doc: dict[str, Any] = {"name": name, "in": where, "schema": schema, "description": description}
    if where == "path":
        doc["required"] = True
    elif schema.get("type") == "array":
        doc["explode"] = True
    return doc


class JsonReply(Response):
    """A 200 JSON response of encoded bytes, its headers built directly (the same headers as
    `Response(body, media_type="application/json")`, without its header assembly)."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]


def json_reply(payload: dict[str, Any]) -> Response:
    """A JSON response encoded directly (the routers' payloads are plain, already-valid data).

    orjson encodes a short list an order of magnitude faster than `json.dumps`: a measurable
    share of a recommendation's cost on the event loop.
    """
    return JsonReply(orjson.dumps(payload))


def too_many(count: int, limit: int, field: str, noun: str, setting: str) -> dict[str, str] | None:
    """The 422 problem of a request list longer than its configured limit, or None."""
    if count <= limit:
        return None
    return {"field": field, "message": f"at most {limit} {noun} (MFSERVE_{setting})"}


def request_history(
    entries: Sequence[HistoryEntry], settings: Settings, field: str = "body.history"
) -> History:
    """A request's history: at most MFSERVE_MAX_HISTORY_ITEMS entries, ratings on the scale."""
    problem = too_many(
        len(entries), settings.max_history_items, field, "entries", "MAX_HISTORY_ITEMS"
    )
    if problem is not None:
        raise InvalidInputError([problem])
    return read_history(
        [(e.item, e.rating) for e in entries], settings.rating_min, settings.rating_max, field
    )


ModelT = TypeVar("ModelT", bound=BaseModel)


async def request_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body validated as `model`, refused exactly as FastAPI refuses a body
    parameter: 400 for malformed JSON, 422 naming each bad field (under `body`), 422 for a body
    that is missing or not sent as JSON (`application/json` or `+json`).

    For plain routes: FastAPI's per-request machinery costs more than a whole scoring call.
    """
    data: Any = _MISSING
    try:
        raw = await request.body()
        if raw:
            data = _loads(raw) if _is_json(request.headers.get("content-type")) else raw
    except json.JSONDecodeError as error:
        problem = {
            "type": "json_invalid",
            "loc": ("body", error.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error.msg},
        }
        raise RequestValidationError([problem], body=error.doc) from error
    except HTTPException:  # the body size limit
        raise
    except Exception as error:
        raise HTTPException(400, "There was an error parsing the body") from error
    if data is _MISSING:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in problems], body=data
        ) from None


_MISSING = object()


def _loads(raw: bytes) -> Any:
    """JSON decoded by orjson (several times faster), or by `json` where orjson refuses it: the
    same value for any document orjson reads, and `json`'s own error (and its leniency: NaN,
    huge integers, UTF-16) for the rest."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _is_json(content_type: str | None) -> bool:
    """Whether a content type is JSON, as FastAPI decides it (absent: not JSON)."""
    if content_type is None:
        return False
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class PlainEndpoint:
    """An ASGI app that serves a hot call with a plain Starlette request handler, skipping
    FastAPI's per-request machinery; `path` labels it in the metrics (as `scope["route"]`).

    The handler's exceptions go up to the application's exception middleware, which turns
    them into responses with the same handlers as Starlette's per-route wrapper would."""

    def __init__(self, path: str, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.path = path
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request."""
        scope["route"] = self
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def plain_route(
    path: str,
    handler: Callable[[Request], Awaitable[Response]],
    method: str = "GET",
    *,
    path_regex: re.Pattern[str] | None = None,
) -> Route:
    """A route served by `PlainEndpoint` (left out of the OpenAPI document); `path_regex`
    narrows what the path template matches."""
    route = Route(path, PlainEndpoint(path, handler), methods=[method], include_in_schema=False)
    if path_regex is not None:
        route.path_regex = path_regex
    return route
