"""Admin operations on training jobs and model versions, with domain errors for the API.

The admin router calls these; each takes the request's session and maps the database layer's
lookups and state conflicts to `ServiceError`s (404, 409, 422).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.config import ENV_PREFIX, Settings
from service.db import jobs, versions
from service.db.jobs import JobRequester, TrainingJob
from service.db.versions import ModelVersion
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ml.catalog import MODEL_NAMES, CatalogError, ModelConfigError, create_model

ALGORITHMS = MODEL_NAMES
"""Every algorithm a retrain may name."""


def default_model_problem(settings: Settings) -> str | None:
    """What is wrong with `MFSERVE_DEFAULT_ALGORITHM`/`_CONFIG`, naming the variable; None if
    they make a model (checked when the API and the worker start)."""
    if settings.default_algorithm not in MODEL_NAMES:
        return (
            f"{ENV_PREFIX}DEFAULT_ALGORITHM: unknown model {settings.default_algorithm!r}; "
            f"one of {', '.join(MODEL_NAMES)}"
        )
    try:
        create_model(settings.default_algorithm, dict(settings.default_config))
    except (CatalogError, ValueError, TypeError) as exc:
        return (
            f"{ENV_PREFIX}DEFAULT_CONFIG is not a valid config for "
            f"{settings.default_algorithm}: {exc}"
        )
    return None


def validate_request(
    settings: Settings, algorithm: str | None, config: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The algorithm and config a retrain will use; 422 naming the field when invalid.

    Without an algorithm, `MFSERVE_DEFAULT_ALGORITHM` (and, without a config,
    `MFSERVE_DEFAULT_CONFIG`) is used.
    """
    if algorithm is None:
        algorithm = settings.default_algorithm
        if config is None:
            config = dict(settings.default_config)
    config = {} if config is None else config
    if algorithm not in MODEL_NAMES:
        raise InvalidInputError(
            [
                {
                    "field": "algorithm",
                    "message": f"unknown algorithm {algorithm!r}; one of {', '.join(MODEL_NAMES)}",
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
) -> TrainingJob:
    """Validate and queue a training job requested through the admin API."""
    algorithm, config = validate_request(settings, algorithm, config)
    return jobs.enqueue_job(session, algorithm, config, requested_by=JobRequester.ADMIN)


def get_job(session: Session, job_id: int) -> TrainingJob:
    """One job; 404 when unknown."""
    try:
        return jobs.get_job(session, job_id)
    except jobs.JobNotFoundError as exc:
        raise NotFoundError(str(exc)) from None


def cancel_job(session: Session, job_id: int) -> TrainingJob:
    """Cancel a queued job, or ask the worker to stop a running one; 404, or 409 if ended."""
    try:
        return jobs.request_cancel(session, job_id)
    except jobs.JobNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except jobs.JobStateError as exc:
        raise ConflictError(str(exc)) from None


def get_version(session: Session, version: int) -> ModelVersion:
    """One model version; 404 when unknown."""
    try:
        return versions.get_version(session, version)
    except versions.VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from None


def get_active_version(session: Session) -> ModelVersion:
    """The active model version; 404 before any was trained."""
    active = versions.get_active_version(session)
    if active is None:
        raise NotFoundError("no model version is active yet")
    return active


def activate_version(session: Session, version: int) -> ModelVersion:
    """Make a version active (rollback or roll forward); 404, or 409 when its artifact is gone."""
    try:
        return versions.activate_version(session, version)
    except versions.VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except versions.VersionUnavailableError as exc:
        raise ConflictError(str(exc)) from None
