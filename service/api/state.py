"""What the application's lifespan builds and every request reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.domain.group_commit import RatingWriter
from service.domain.key_cache import Authenticator
from service.recommend import Serving
from service.registry import ModelRegistry

ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""A part of the readiness probe: whether it is ready, and fields for the `/readyz` reply."""


@dataclass(frozen=True)
class ServiceState:
    """Everything one application instance serves with, built whole by the lifespan."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    """Read sessions (SQLite: deferred transactions)."""
    write_sessions: sessionmaker[Session]
    """Write sessions (SQLite: BEGIN IMMEDIATE, so writers queue instead of failing)."""
    rating_writer: RatingWriter
    """Group commit of `POST /ratings` (`service.domain.group_commit`)."""
    registry: ModelRegistry
    """The model version this process serves, with its serving tables (`service.registry`)."""
    serving: Serving
    """The serving calls' batcher and profile reads (`service.recommend`)."""
    auth: Authenticator
    """Who may call what: the API keys in memory (`service.domain.key_cache`)."""
    readiness: list[ReadinessCheck] = field(default_factory=list)
    """Extra `/readyz` checks (such as the served model version)."""


class LifespanState(TypedDict):
    """The typed lifespan state; requests read it as `request.state.service`."""

    service: ServiceState
