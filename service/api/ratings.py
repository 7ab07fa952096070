"""Ratings: ingest (`POST /ratings`), a user's ratings, deleting ratings and users."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request, Response, status
from pydantic import TypeAdapter

from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.deps import (
    ItemPath,
    SessionDep,
    UserPath,
    WriteSessionDep,
    parse_json_body,
)
from service.api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    decode_cursor,
    encode_cursor,
)
from service.api.schemas import (
    IngestResult,
    RatingBatchIn,
    RatingIn,
    UserRatingOut,
    UserRatingsPage,
)
from service.api.state import ServiceState
from service.db import queries
from service.db.keys import Scope
from service.domain.ingest import InvalidRatingsError, PayloadShapeError, RatingRules, parse_payload
from service.errors import InvalidInputError, NotFoundError

router = APIRouter(tags=["ratings"], responses=AUTH_RESPONSES)

MAX_REPORTED_ERRORS = 100
"""Row errors listed in a 422 reply; `error_count` tells how many there were in all."""

REF_TEMPLATE = "#/components/schemas/{model}"
BODY_SCHEMA = TypeAdapter(RatingIn | RatingBatchIn).json_schema(ref_template=REF_TEMPLATE)
"""OpenAPI schema of the body; the body itself is parsed by the shared rating validator."""
BODY_COMPONENTS: dict[str, Any] = BODY_SCHEMA.pop("$defs", {})


@router.post(
    "/ratings",
    status_code=status.HTTP_201_CREATED,
    summary="Store one rating or a batch",
    response_model=IngestResult,
    dependencies=[require_scope(Scope.INGEST)],
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}
    },
    responses={
        400: {"description": "malformed JSON"},
        413: {"description": "body over MFSERVE_MAX_BODY_BYTES"},
        422: {"description": "invalid rows, each named by index and field; nothing stored"},
    },
)
async def post_ratings(request: Request) -> Response:
    """Store `{"user", "item", "rating"?, "timestamp"?}` or `{"ratings": [...]}`, all or nothing.

    The reply goes out once the transaction holding the ratings has committed; requests that
    arrive together share it (group commit), each still all or nothing. The application serves
    this call in front of its router (`post_ratings_hot`, installed by `app.py` through
    `hot_routes.HotRoutes`); this route describes it in the OpenAPI document.
    """
    state = cast(ServiceState, request.state.service)
    reply = await store_ratings(state, await request.body())
    return Response(reply, status_code=201, media_type="application/json")


async def post_ratings_hot(
    state: ServiceState, authorization: str | None, body: bytes
) -> tuple[int, bytes]:
    """`POST /ratings` as a hot call: check the key, store the body's ratings; (201, reply)."""
    state.auth.check(authorization, Scope.INGEST)
    return 201, await store_ratings(state, body)


async def store_ratings(state: ServiceState, body: bytes) -> bytes:
    """Validate a `POST /ratings` body, store it once committed; the JSON reply of counts.

    Parsed and checked on the event loop: a thread-pool hop would cost more than the
    request's share of the commit.
    """
    settings = state.settings
    payload = _parse_json(body)
    now = datetime.now(UTC)
    rules = RatingRules.from_settings(settings, now)
    try:
        batch = parse_payload(payload, rules, max_rows=settings.max_batch_rows, now=now)
    except PayloadShapeError as exc:
        raise InvalidInputError([{"field": "body", "message": str(exc)}]) from None
    except InvalidRatingsError as exc:
        errors = [
            {"row": error.row, "field": error.field, "message": error.message}
            for error in exc.errors[:MAX_REPORTED_ERRORS]
        ]
        raise InvalidInputError(errors, error_count=len(exc.errors)) from None
    counts = await state.rating_writer.store(batch, now=now)
    return orjson.dumps(
        {"inserted": counts.inserted, "updated": counts.updated, "ignored": counts.ignored}
    )


def _parse_json(body: bytes) -> object:
    """The body as JSON: orjson for what it reads, the standard parser for the rest.

    The standard parser reads what orjson refuses (NaN, which validation then names; UTF-16;
    huge integers) and words the 400 of malformed bodies.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return parse_json_body(body)


HOT_ROUTES = {("POST", "/ratings"): post_ratings_hot}
"""The calls of this module that `hot_routes.HotRoutes` serves in front of the application."""


@router.get(
    "/users/{user}/ratings",
    summary="A user's ratings, page by page",
    dependencies=[require_scope(Scope.READ)],
)
def get_user_ratings(
    user: UserPath,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> UserRatingsPage:
    """The user's ratings in a stable order; follow `next_cursor` until it is null."""
    after = decode_cursor("r", cursor)
    user_id = queries.find_user_id(session, user)
    if user_id is None:
        raise NotFoundError(f"unknown user {user!r}")
    rows = queries.list_user_ratings(session, user_id, limit=limit, after_item_id=after)
    return UserRatingsPage(
        items=[UserRatingOut(item=r.item, rating=r.rating, timestamp=r.event_at) for r in rows],
        next_cursor=encode_cursor("r", rows[-1].item_id) if len(rows) == limit else None,
    )


@router.delete(
    "/users/{user}/ratings/{item}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one rating",
    dependencies=[require_scope(Scope.INGEST)],
)
def delete_rating(user: UserPath, item: ItemPath, session: WriteSessionDep) -> Response:
    """Forget the user's rating of the item; 404 when there is none."""
    if not queries.delete_rating(session, user, item, now=datetime.now(UTC)):
        raise NotFoundError(f"user {user!r} has no rating of item {item!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/users/{user}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user",
    dependencies=[require_scope(Scope.INGEST)],
)
def delete_user(user: UserPath, session: WriteSessionDep) -> Response:
    """Delete the user and every rating of theirs; 404 for an unknown user."""
    if queries.delete_user(session, user) is None:
        raise NotFoundError(f"unknown user {user!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
