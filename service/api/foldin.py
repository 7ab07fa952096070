"""`POST /foldin`: the user vector of a history, computed and returned, never stored."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.serving_deps import RuntimeDep, json_reply, request_history
from service.api.serving_schemas import FoldInIn, FoldInOut
from service.db.keys import Scope
from service.recommend import fold_in_history

router = APIRouter(
    tags=["recommendations"], dependencies=[require_scope(Scope.SERVE)], responses=AUTH_RESPONSES
)


@router.post(
    "/foldin",
    summary="Fold a history into the model",
    response_model=FoldInOut,
    responses={503: {"description": "no model has been trained yet (`no_model`)"}},
)
async def foldin(body: FoldInIn, runtime: RuntimeDep) -> Response:
    """The embedding and bias the served model gives this history (zeros when it knows none of
    its items); items it does not know are listed in `unknown_items`."""
    history = request_history(body.history, runtime.settings)
    result = fold_in_history(runtime.current(), history)
    runtime.count_sources("foldin", ["foldin"])
    return json_reply(
        {
            "embedding": result.embedding,
            "bias": result.bias,
            "model_version": result.model_version,
            "unknown_items": result.unknown_items,
        }
    )
