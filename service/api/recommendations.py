"""`GET /recommend/{user}`: top-N items from the served model version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.admin_schemas import RecommendationOut, RecommendedItem
from service.api.deps import SessionDep, StateDep, UserPath
from service.serving import recommend_for_user

router = APIRouter(tags=["recommendations"])

MAX_N = 1000


@router.get(
    "/recommend/{user}",
    summary="Recommendations for a user",
    responses={503: {"description": "no model has been trained yet"}},
)
def recommend(
    user: UserPath,
    session: SessionDep,
    state: StateDep,
    n: Annotated[int, Query(ge=1, le=MAX_N, description="number of items")] = 10,
) -> RecommendationOut:
    """Top-n items the user has not rated: from the user's stored embedding when the model
    was trained on them (source "model"), else by popularity (source "popular")."""
    served = None if state.registry is None else state.registry.current  # read once
    result = recommend_for_user(session, served, user, n)
    return RecommendationOut(
        user=result.user,
        model_version=result.model_version,
        source=result.source,
        items=[RecommendedItem(item=item, score=score) for item, score in result.items],
    )
