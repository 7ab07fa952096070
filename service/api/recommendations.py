"""`GET /recommend/{user}`, `POST /recommend` (anonymous history) and `POST /recommend/batch`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.auth import AUTH_RESPONSES, SCHEME_NAME, authorize, require_scope
from service.api.deps import checked_id
from service.api.schemas import PATH_ID, QUERY_ID
from service.api.serving_deps import (
    RuntimeDep,
    json_reply,
    plain_route,
    query_args,
    query_bool,
    query_doc,
    query_ids,
    query_int,
    request_history,
    runtime_of,
    too_many,
)
from service.api.serving_schemas import (
    AnonymousRecommendIn,
    BatchRecommendationOut,
    BatchRecommendIn,
    RecommendationOut,
)
from service.db.keys import Scope
from service.errors import InvalidInputError
from service.recommend import (
    Recommendation,
    RecommendOptions,
    check_n,
    rank_history,
    rank_users,
)

router = APIRouter(
    tags=["recommendations"], dependencies=[require_scope(Scope.SERVE)], responses=AUTH_RESPONSES
)

NO_MODEL: dict[int | str, dict[str, Any]] = {
    503: {"description": "no model has been trained yet (`no_model`)"}
}


def recommendation_payload(result: Recommendation) -> dict[str, Any]:
    """The JSON shape of one recommendation list."""
    return {
        "user": result.user,
        "model_version": result.model_version,
        "source": result.source,
        "items": [{"item": item, "score": score} for item, score in result.items],
    }


RECOMMEND_PARAMETERS = [
    query_doc(
        "user", {**PATH_ID, "not": {"const": "batch"}}, "external user id (not `batch`)", "path"
    ),
    query_doc(
        "n",
        {"type": "integer", "default": 10},
        "list length, 1 to MFSERVE_MAX_RECOMMENDATIONS (larger: 422)",
    ),
    query_doc(
        "exclude_rated", {"type": "boolean", "default": True}, "leave out the user's rated items"
    ),
    query_doc("exclude", {"type": "array", "items": QUERY_ID}, "items to leave out"),
    query_doc("tag", {"type": "array", "items": QUERY_ID}, "only items carrying every tag"),
]


async def recommend(request: Request) -> Response:
    """Top-n items for a user: from the stored embedding while the user is unchanged since the
    model's snapshot (source "model"), from their current history folded in (source "foldin"),
    or by popularity when they have no usable history (source "popular").

    Parameters are parsed by hand: FastAPI's parameter machinery costs more than the scoring.
    """
    authorize(request, Scope.SERVE)
    runtime = runtime_of(request)
    user = checked_id(request.path_params["user"], "user")
    args = query_args(request)
    n = query_int(args, "n", 10)
    check_n(n, runtime.settings.max_recommendations, "query.n")
    options = RecommendOptions(
        n,
        query_bool(args, "exclude_rated", True),
        query_ids(args, "exclude"),
        query_ids(args, "tag"),
    )
    result = (await rank_users(runtime.current(), [user], options))[0]
    runtime.count_sources("recommend", [result.source])
    return json_reply(recommendation_payload(result))


USER_PATH = re.compile("^/recommend/(?!batch$)(?P<user>[^/]+)$")
"""`/recommend/{user}` without `/recommend/batch`, which is only POST (as OpenAPI matches a
concrete path before a templated one): a GET there is 405, not the list of a user "batch"."""

HOT_ROUTES = [plain_route("/recommend/{user}", recommend, path_regex=USER_PATH)]
"""The hottest call, served by a plain Starlette route that the application puts in front of
all others: it skips FastAPI's per-request machinery (dependency solving, exit stacks, response
handling) and its matching of included routers (each is matched twice, once to
select it and once inside it). `RECOMMEND_OPERATION` is its OpenAPI entry."""

RECOMMEND_OPERATION: dict[str, Any] = {
    "tags": ["recommendations"],
    "summary": "Recommendations for a user",
    "description": (recommend.__doc__ or "").split("\n\n")[0],
    "operationId": "recommend_recommend__user__get",
    "parameters": RECOMMEND_PARAMETERS,
    "security": [{SCHEME_NAME: []}],
    "responses": {
        "200": {
            "description": "Successful Response",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RecommendationOut"}}
            },
        },
        **{str(status): spec for status, spec in {**AUTH_RESPONSES, **NO_MODEL}.items()},
        "405": {"description": "`/recommend/batch` is only POST (`method_not_allowed`)"},
    },
}
"""The OpenAPI operation of `GET /recommend/{user}` (the plain route is not FastAPI's to
document); the scope it needs is checked by `authorize` in the handler."""


@router.post(
    "/recommend",
    summary="Recommendations for an anonymous history",
    response_model=RecommendationOut,
    responses=NO_MODEL,
)
async def recommend_anonymous(body: AnonymousRecommendIn, runtime: RuntimeDep) -> Response:
    """Top-n items for a history that is not stored; the history's items are left out."""
    settings = runtime.settings
    check_n(body.n, settings.max_recommendations, "body.n")
    history = request_history(body.history, settings)
    options = RecommendOptions(body.n, body.exclude_rated, tuple(body.exclude), tuple(body.tags))
    result = await rank_history(runtime.current(), history, options)
    runtime.count_sources("recommend_anonymous", [result.source])
    return json_reply(recommendation_payload(result))


@router.post(
    "/recommend/batch",
    summary="Recommendations for many users",
    response_model=BatchRecommendationOut,
    responses=NO_MODEL,
)
async def recommend_batch(body: BatchRecommendIn, runtime: RuntimeDep) -> Response:
    """One list per user (request order; repeated users repeat), one database query for all."""
    settings = runtime.settings
    check_n(body.n, settings.max_recommendations, "body.n")
    problem = too_many(
        len(body.users), settings.max_batch_users, "body.users", "users", "MAX_BATCH_USERS"
    )
    if problem is not None:
        raise InvalidInputError([problem])
    options = RecommendOptions(body.n, body.exclude_rated, tuple(body.exclude), tuple(body.tags))
    context = runtime.current()
    results = await rank_users(context, body.users, options)
    runtime.count_sources("recommend_batch", [r.source for r in results])
    return json_reply(
        {
            "model_version": context.served.version,
            "results": [recommendation_payload(r) for r in results],
        }
    )
