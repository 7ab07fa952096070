"""`GET /items/{item}/similar`: items whose factors point the same way (cosine similarity)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.deps import ItemPath
from service.api.serving_deps import RuntimeDep, json_reply
from service.api.serving_schemas import SimilarOut
from service.db.keys import Scope
from service.recommend import check_n, similar_items

router = APIRouter(
    tags=["recommendations"], dependencies=[require_scope(Scope.SERVE)], responses=AUTH_RESPONSES
)


@router.get(
    "/items/{item}/similar",
    summary="Items similar to an item",
    response_model=SimilarOut,
    responses={
        404: {"description": "the served model does not know the item"},
        409: {"description": "the served model has no item factors (popularity)"},
        503: {"description": "no model has been trained yet (`no_model`)"},
    },
)
async def similar(
    item: ItemPath,
    runtime: RuntimeDep,
    n: Annotated[int, Query(description="list length, 1 to MFSERVE_MAX_RECOMMENDATIONS")] = 10,
) -> Response:
    """The n items most similar to `item` by the cosine of their factors, itself left out."""
    check_n(n, runtime.settings.max_recommendations, "query.n")
    result = similar_items(runtime.current(), item, n)
    return json_reply(
        {
            "item": result.item,
            "model_version": result.model_version,
            "items": [{"item": other, "score": score} for other, score in result.items],
        }
    )
