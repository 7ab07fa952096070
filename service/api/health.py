"""Liveness (`/healthz`) and readiness (`/readyz`) probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import StateDep
from service.api.schemas import Health, Readiness
from service.db.migrations import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    """The process is alive (no database access)."""
    return Health()


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers and its schema is at head (and every extra check passes)."""
    reply: dict[str, Any] = {"status": "ready", "database": "ok", "schema_revision": None}
    ready = True
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        reply["schema_revision"] = current_revision(state.engine)
    except Exception as exc:  # any failure to reach the database means "not ready"
        ready = False
        reply["database"] = f"unreachable: {type(exc).__name__}"
    else:
        if reply["schema_revision"] != head_revision():
            ready = False
            reply["database"] = "schema not at head: run `mfserve migrate`"
    for check in state.readiness:
        part_ready, fields = check()
        ready = ready and part_ready
        reply.update(fields)
    reply["status"] = "ready" if ready else "not_ready"
    return JSONResponse(Readiness(**reply).model_dump(), status_code=200 if ready else 503)
