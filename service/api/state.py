"""What the application's lifespan builds and every request reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.domain.group_commit import RatingWriter

if TYPE_CHECKING:
    from service.registry import ModelRegistry
    from service.serving import ServingRuntime

ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""A part of the readiness probe: whether it is ready, and fields for the `/readyz` reply."""


@dataclass
class ServiceState:
    """The engine, session factories and settings of one application instance."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    """Read sessions (SQLite: deferred transactions)."""
    write_sessions: sessionmaker[Session]
    """Write sessions (SQLite: BEGIN IMMEDIATE, so writers queue instead of failing)."""
    rating_writer: RatingWriter | None = None
    """Group commit of `POST /ratings` (set by the lifespan; see `service.domain.group_commit`)."""
    readiness: list[ReadinessCheck] = field(default_factory=list)
    """Extra `/readyz` checks (such as the served model version) added by later components."""
    registry: ModelRegistry | None = None
    """The model version this process serves (set by the lifespan; see `service.registry`)."""
    serving: ServingRuntime | None = None
    """Item tables, catalog and read engine of the serving calls (see `service.serving`)."""


class LifespanState(TypedDict):
    """The typed lifespan state; requests read it as `request.state.service`."""

    service: ServiceState
