"""What the serving routers share: the serving runtime of the request and JSON replies."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.responses import Response

from service.api.state import ServiceState
from service.errors import ServiceUnavailableError
from service.serving import ServingRuntime


def get_runtime(request: Request) -> ServingRuntime:
    """The serving runtime the lifespan built (503 while it is not running)."""
    runtime = cast(ServiceState, request.state.service).serving
    if runtime is None:
        raise ServiceUnavailableError("serving is not running in this process")
    return runtime


RuntimeDep = Annotated[ServingRuntime, Depends(get_runtime)]


def json_reply(payload: dict[str, Any]) -> Response:
    """A JSON response encoded directly (the routers' payloads are plain, already-valid data)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/json")
