"""Admin operations on training jobs and model versions, with domain errors for the API.

The admin router calls these; each takes the request's session and maps the database layer's
lookups and state conflicts to `ServiceError`s (404, 409, 422).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.config import ALGORITHMS, Settings
from service.db import jobs
from service.errors import ConflictError, InvalidInputError, NotFoundError


def validate_request(
    settings: Settings, algorithm: str | None, config: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The algorithm and config a retrain will use; 422 naming the field when invalid.

    Without an algorithm, `MFSERVE_DEFAULT_ALGORITHM` (and, without a config,
    `MFSERVE_DEFAULT_CONFIG`) is used.
    """
    from service.ml.catalog import ModelConfigError, create_model

    if algorithm is None:
        algorithm = settings.default_algorithm
        if config is None:
            config = dict(settings.default_config)
    config = {} if config is None else config
    if algorithm not in ALGORITHMS:
        raise InvalidInputError(
            [
                {
                    "field": "algorithm",
                    "message": f"unknown algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}",
                }
            ]
        )
    try:
        create_model(algorithm, config)
    except ModelConfigError as exc:
        raise InvalidInputError(
            [
                {
                    "field": ".".join(["config", *(str(p) for p in error.get("loc", ()))]),
                    "message": str(error.get("msg", "")),
                }
                for error in exc.errors
            ]
        ) from None
    except (ValueError, TypeError) as exc:
        raise InvalidInputError([{"field": "config", "message": str(exc)}]) from None
    return algorithm, config


def submit_retrain(
    session: Session, settings: Settings, algorithm: str | None, config: dict[str, Any] | None
) -> jobs.JobRecord:
    """Validate and queue a training job requested through the admin API."""
    algorithm, config = validate_request(settings, algorithm, config)
    return jobs.enqueue_job(session, algorithm, config, requested_by="admin")


def get_job(session: Session, job_id: int) -> jobs.JobRecord:
    """One job; 404 when unknown."""
    try:
        return jobs.get_job(session, job_id)
    except jobs.JobNotFoundError as exc:
        raise NotFoundError(str(exc)) from None


def cancel_job(session: Session, job_id: int) -> jobs.JobRecord:
    """Cancel a queued job, or ask the worker to stop a running one; 404, or 409 if ended."""
    try:
        return jobs.request_cancel(session, job_id)
    except jobs.JobNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except jobs.JobStateError as exc:
        raise ConflictError(str(exc)) from None


def get_version(session: Session, version: int) -> jobs.VersionRecord:
    """One model version; 404 when unknown."""
    try:
        return jobs.get_version(session, version)
    except jobs.VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from None


def get_active_version(session: Session) -> jobs.VersionRecord:
    """The active model version; 404 before any was trained."""
    active = jobs.get_active_version(session)
    if active is None:
        raise NotFoundError("no model version is active yet")
    return active


def activate_version(session: Session, version: int) -> jobs.VersionRecord:
    """Make a version active (rollback or roll forward); 404, or 409 when its artifact is gone."""
    try:
        return jobs.activate_version(session, version)
    except jobs.VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except jobs.VersionUnavailableError as exc:
        raise ConflictError(str(exc)) from None
