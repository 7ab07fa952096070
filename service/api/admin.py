"""Admin API: retrain, watch and cancel jobs, list versions, activate one (rollback).

Every route needs the `admin` scope: `Authorization: Bearer <key>` with an admin key or
MFSERVE_ADMIN_TOKEN, whatever MFSERVE_AUTH says. No header (or not a Bearer one) answers 401,
an unknown key 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from service.api.admin_schemas import (
    JobAccepted,
    JobOut,
    JobPage,
    RetrainIn,
    VersionOut,
    VersionPage,
)
from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.deps import SessionDep, SettingsDep, StateDep, WriteSessionDep
from service.api.pagination import CursorQuery, LimitQuery, decode_cursor, encode_cursor
from service.db import jobs, versions
from service.db.jobs import JobStatus
from service.db.keys import Scope
from service.db.tables import MAX_ROW_ID
from service.domain import training

router = APIRouter(
    tags=["admin"], dependencies=[require_scope(Scope.ADMIN)], responses=AUTH_RESPONSES
)

JobId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="training job id")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="model version number")]
StatusQuery = Annotated[JobStatus | None, Query(description="only this status")]


def _served(state: StateDep) -> int | None:
    registry = state.registry
    return None if registry is None else registry.version


@router.post(
    "/admin/retrain",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue a retrain",
)
def retrain(body: RetrainIn, session: WriteSessionDep, settings: SettingsDep) -> JobAccepted:
    """Queue a training job of `algorithm` with `config`; a worker picks it up."""
    job = training.submit_retrain(session, settings, body.algorithm, body.config)
    return JobAccepted(job_id=job.job_id, status=job.status)


@router.get("/admin/jobs", summary="List training jobs")
def list_jobs(
    session: SessionDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    status: StatusQuery = None,
) -> JobPage:
    """Jobs, newest first, with progress, metrics and errors."""
    before = decode_cursor("jobs", cursor)
    found = jobs.list_jobs(session, limit=limit + 1, before=before, status=status)
    page = found[:limit]
    more = len(found) > limit
    return JobPage(
        items=[JobOut.of(job) for job in page],
        next_cursor=encode_cursor("jobs", page[-1].job_id) if more else None,
    )


@router.get("/admin/jobs/{job_id}", summary="One training job")
def get_job(job_id: JobId, session: SessionDep) -> JobOut:
    """A job with live progress while it runs, and metrics or the error once it ended."""
    return JobOut.of(training.get_job(session, job_id))


@router.post(
    "/admin/jobs/{job_id}/cancel",
    summary="Cancel a training job",
    responses={409: {"description": "the job has ended"}},
)
def cancel_job(job_id: JobId, session: WriteSessionDep) -> JobOut:
    """Cancel a queued job at once; a running one stops after its current epoch (409 if ended)."""
    return JobOut.of(training.cancel_job(session, job_id))


@router.get("/models", summary="List model versions")
def list_models(
    session: SessionDep, state: StateDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> VersionPage:
    """Published model versions, newest first."""
    before = decode_cursor("models", cursor)
    found = versions.list_versions(session, limit=limit + 1, before=before)
    page = found[:limit]
    served = _served(state)
    return VersionPage(
        items=[VersionOut.of(version, served) for version in page],
        next_cursor=encode_cursor("models", page[-1].version) if len(found) > limit else None,
    )


@router.get(
    "/models/active",
    summary="The active model version",
    responses={404: {"description": "no model version is active yet"}},
)
def active_model(session: SessionDep, state: StateDep) -> VersionOut:
    """The version API processes serve (404 before any model was trained)."""
    return VersionOut.of(training.get_active_version(session), _served(state))


@router.get("/models/{version}", summary="One model version")
def get_model(version: VersionNumber, session: SessionDep, state: StateDep) -> VersionOut:
    """One published version."""
    return VersionOut.of(training.get_version(session, version), _served(state))


@router.post(
    "/admin/models/{version}/activate",
    summary="Activate a model version",
    responses={409: {"description": "retention removed the version's artifact"}},
)
def activate(version: VersionNumber, session: WriteSessionDep, state: StateDep) -> VersionOut:
    """Make a version active (rollback or roll forward); every API process swaps to it within
    `MFSERVE_REGISTRY_POLL_INTERVAL` seconds."""
    return VersionOut.of(training.activate_version(session, version), _served(state))
