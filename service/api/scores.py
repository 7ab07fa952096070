"""`POST /scores`: a score per requested item for a user or a history."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.auth import AUTH_RESPONSES, authorize, require_scope
from service.api.serving_deps import (
    RuntimeDep,
    json_reply,
    plain_route,
    request_body,
    request_history,
    runtime_of,
    too_many,
)
from service.api.serving_schemas import ScoresIn, ScoresOut
from service.db.keys import Scope
from service.errors import InvalidInputError
from service.recommend import Serving, score_items

router = APIRouter(
    tags=["recommendations"], dependencies=[require_scope(Scope.SERVE)], responses=AUTH_RESPONSES
)


@router.post(
    "/scores",
    summary="Scores of given items",
    response_model=ScoresOut,
    responses={503: {"description": "no model has been trained yet (`no_model`)"}},
)
async def scores(body: ScoresIn, runtime: RuntimeDep) -> Response:
    """Scores in request order (predicted ratings for explicit models); unknown items get null
    and are listed in `unknown_items`. A user is scored like `GET /recommend/{user}` would."""
    return await answer_scores(body, runtime)


async def scores_plain(request: Request) -> Response:
    """`POST /scores` without FastAPI's per-request machinery (the body checked the same)."""
    authorize(request, Scope.SERVE)  # the plain route skips the router's dependency
    return await answer_scores(await request_body(request, ScoresIn), runtime_of(request))


HOT_ROUTES = [plain_route("/scores", scores_plain, "POST")]
"""`POST /scores` as a plain route in front of the others (see `recommendations.HOT_ROUTES`);
the APIRoute above stays for the OpenAPI document."""


async def answer_scores(body: ScoresIn, runtime: Serving) -> Response:
    """The reply to a checked `POST /scores` body."""
    settings = runtime.settings
    problems: list[dict[str, str] | None] = []
    user = body.user if "user" in body.model_fields_set else None
    given = body.history if "history" in body.model_fields_set else None
    if (user is None) == (given is None):
        problems.append({"field": "body.user", "message": "give exactly one of user or history"})
    problems.append(
        too_many(
            len(body.items), settings.max_score_items, "body.items", "items", "MAX_SCORE_ITEMS"
        )
    )
    if given is not None:
        problems.append(
            too_many(
                len(given),
                settings.max_history_items,
                "body.history",
                "entries",
                "MAX_HISTORY_ITEMS",
            )
        )
    found = [problem for problem in problems if problem is not None]
    if found:
        raise InvalidInputError(found)
    history = None if given is None else request_history(given, settings)
    result = await score_items(runtime.current(), body.items, user=user, history=history)
    runtime.count_sources("scores", [result.source])
    return json_reply(
        {
            "model_version": result.model_version,
            "scores": [{"item": item, "score": score} for item, score in result.scores],
            "unknown_items": result.unknown_items,
        }
    )
