"""`GET /recommend/{user}`, `POST /recommend` (anonymous history) and `POST /recommend/batch`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.deps import UserPath
from service.api.serving_deps import RuntimeDep, json_reply
from service.api.serving_schemas import (
    AnonymousRecommendIn,
    BatchRecommendationOut,
    BatchRecommendIn,
    RecommendationOut,
)
from service.errors import InvalidInputError
from service.serving import (
    Recommendation,
    RecommendOptions,
    check_n,
    read_history,
    recommend_for_history,
    recommend_for_user,
    recommend_for_users,
)

router = APIRouter(tags=["recommendations"])

NO_MODEL: dict[int | str, dict[str, Any]] = {
    503: {"description": "no model has been trained yet (`no_model`)"}
}
ItemsQuery = Annotated[list[str] | None, Query(description="repeatable")]


def recommendation_payload(result: Recommendation) -> dict[str, Any]:
    """The JSON shape of one recommendation list."""
    return {
        "user": result.user,
        "model_version": result.model_version,
        "source": result.source,
        "items": [{"item": item, "score": score} for item, score in result.items],
    }


@router.get(
    "/recommend/{user}",
    summary="Recommendations for a user",
    response_model=RecommendationOut,
    responses=NO_MODEL,
)
def recommend(
    user: UserPath,
    runtime: RuntimeDep,
    n: Annotated[int, Query(description="list length, 1 to MFSERVE_MAX_RECOMMENDATIONS")] = 10,
    exclude_rated: Annotated[bool, Query(description="leave out the user's rated items")] = True,
    exclude: Annotated[
        list[str] | None, Query(description="items to leave out (repeatable)")
    ] = None,
    tag: Annotated[
        list[str] | None, Query(description="only items carrying every tag given (repeatable)")
    ] = None,
) -> Response:
    """Top-n items for a user: from the stored embedding while the user is unchanged since the
    model's snapshot (source "model"), from their current history folded in (source "foldin"),
    or by popularity when they have no usable history (source "popular")."""
    check_n(n, runtime.settings.max_recommendations, "query.n")
    options = RecommendOptions(n, exclude_rated, tuple(exclude or ()), tuple(tag or ()))
    result = recommend_for_user(runtime.current(), user, options)
    runtime.count_sources("recommend", [result.source])
    return json_reply(recommendation_payload(result))


@router.post(
    "/recommend",
    summary="Recommendations for an anonymous history",
    response_model=RecommendationOut,
    responses=NO_MODEL,
)
def recommend_anonymous(body: AnonymousRecommendIn, runtime: RuntimeDep) -> Response:
    """Top-n items for a history that is not stored; the history's items are left out."""
    settings = runtime.settings
    check_n(body.n, settings.max_recommendations, "body.n")
    if len(body.history) > settings.max_history_items:
        raise InvalidInputError(
            [
                {
                    "field": "body.history",
                    "message": f"at most {settings.max_history_items} entries "
                    "(MFSERVE_MAX_HISTORY_ITEMS)",
                }
            ]
        )
    history = read_history(
        [(e.item, e.rating) for e in body.history],
        settings.rating_min,
        settings.rating_max,
        "body.history",
    )
    options = RecommendOptions(body.n, body.exclude_rated, tuple(body.exclude), tuple(body.tags))
    result = recommend_for_history(runtime.current(), history, options)
    runtime.count_sources("recommend_anonymous", [result.source])
    return json_reply(recommendation_payload(result))


@router.post(
    "/recommend/batch",
    summary="Recommendations for many users",
    response_model=BatchRecommendationOut,
    responses=NO_MODEL,
)
def recommend_batch(body: BatchRecommendIn, runtime: RuntimeDep) -> Response:
    """One list per user (request order; repeated users repeat), one database query for all."""
    settings = runtime.settings
    check_n(body.n, settings.max_recommendations, "body.n")
    if len(body.users) > settings.max_batch_users:
        raise InvalidInputError(
            [
                {
                    "field": "body.users",
                    "message": f"at most {settings.max_batch_users} users "
                    "(MFSERVE_MAX_BATCH_USERS)",
                }
            ]
        )
    options = RecommendOptions(body.n, body.exclude_rated, tuple(body.exclude), tuple(body.tags))
    context = runtime.current()
    results = recommend_for_users(context, body.users, options)
    runtime.count_sources("recommend_batch", [r.source for r in results])
    return json_reply(
        {
            "model_version": context.served.version,
            "results": [recommendation_payload(r) for r in results],
        }
    )
