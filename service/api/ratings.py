"""Ratings: ingest (`POST /ratings`), a user's ratings, deleting ratings and users."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request, Response, status
from pydantic import TypeAdapter
from starlette.routing import Route

from service.api.deps import (
    ItemPath,
    SessionDep,
    UserPath,
    WriteSessionDep,
    read_json_body,
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
from service.api.serving_deps import PlainEndpoint
from service.api.state import ServiceState
from service.db import queries
from service.domain.ingest import InvalidRatingsError, PayloadShapeError, RatingRules, parse_payload
from service.errors import InvalidInputError, NotFoundError

router = APIRouter(tags=["ratings"])

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
    arrive together share it (group commit), each still all or nothing. The body is parsed
    and checked by hand, on the event loop: FastAPI's body and dependency handling, and a
    thread-pool hop, would cost more than the request's share of the commit.
    """
    state = cast(ServiceState, request.state.service)
    settings = state.settings
    payload = await read_json_body(request)
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
    reply = {"inserted": counts.inserted, "updated": counts.updated, "ignored": counts.ignored}
    return Response(orjson.dumps(reply), status_code=201, media_type="application/json")


HOT_ROUTES = [
    Route(
        "/ratings",
        PlainEndpoint("/ratings", post_ratings),
        methods=["POST"],
        include_in_schema=False,
    )
]
"""`POST /ratings` served by a plain Starlette route that the application puts in front of the
others (see `recommendations.HOT_ROUTES`); the APIRoute above stays for the OpenAPI document."""


@router.get("/users/{user}/ratings", summary="A user's ratings, page by page")
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
)
def delete_rating(user: UserPath, item: ItemPath, session: WriteSessionDep) -> Response:
    """Forget the user's rating of the item; 404 when there is none."""
    if not queries.delete_rating(session, user, item, now=datetime.now(UTC)):
        raise NotFoundError(f"user {user!r} has no rating of item {item!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/users/{user}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a user")
def delete_user(user: UserPath, session: WriteSessionDep) -> Response:
    """Delete the user and every rating of theirs; 404 for an unknown user."""
    if queries.delete_user(session, user) is None:
        raise NotFoundError(f"unknown user {user!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
