"""Request dependencies: service state, settings, sessions that commit or roll back, JSON body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, cast

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.api.schemas import PATH_ID
from service.api.state import ServiceState
from service.config import Settings
from service.db.session import transaction
from service.domain.ingest import check_external_id
from service.errors import InvalidInputError, MalformedJSONError


def get_state(request: Request) -> ServiceState:
    """The state the lifespan built."""
    return cast(ServiceState, request.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    """The service's settings."""
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A read session; its transaction ends when the endpoint returns."""
    with transaction(state.sessions) as session:
        yield session


def get_write_session(state: StateDep) -> Iterator[Session]:
    """A write session; it commits before the response is sent, or rolls back on error."""
    with transaction(state.write_sessions) as session:
        yield session


# scope="function": the session closes (and commits) when the endpoint returns, before the
# response goes out, so a 2xx reply means the data is committed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]


async def read_json_body(request: Request) -> object:
    """The request body parsed as JSON (any content type); 400 when it is not JSON."""
    return parse_json_body(await request.body())


def parse_json_body(body: bytes) -> object:
    """A request body parsed as JSON; 400 when it is not JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJSONError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedJSONError("malformed JSON: nested too deeply") from None


JsonBodyDep = Annotated[object, Depends(read_json_body)]


def checked_id(value: str, field: str) -> str:
    """The external id, checked like ids in a rating (422 naming `field` otherwise)."""
    problem = check_external_id(value)
    if problem is not None:
        raise InvalidInputError([{"field": field, "message": problem}])
    return value


def user_path(
    user: Annotated[str, Path(description="external user id", json_schema_extra=PATH_ID)],
) -> str:
    """The user id from the path, checked like ids in a rating."""
    return checked_id(user, "user")


async def item_path(
    item: Annotated[str, Path(description="external item id", json_schema_extra=PATH_ID)],
) -> str:
    """The item id from the path, checked like ids in a rating.

    Async, so that FastAPI calls it on the event loop instead of through its thread pool.
    """
    return checked_id(item, "item")


UserPath = Annotated[str, Depends(user_path)]
ItemPath = Annotated[str, Depends(item_path)]
