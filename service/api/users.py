"""Users' attributes: `PUT /users/{user}` stores what a user told about themselves (used by
feature-aware models for cold start), `GET /users/{user}` reads it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.deps import SessionDep, UserPath, WriteSessionDep
from service.db.tables import EXTERNAL_ID_LENGTH
from service.db.user_attributes import (
    StoredAttributes,
    get_user_attributes,
    put_user_attributes,
)
from service.errors import NotFoundError

MAX_ATTRIBUTES = 100
"""Most attributes one user may have."""

MAX_STRING_LENGTH = 1000
"""Longest string value of an attribute, in characters."""

router = APIRouter(tags=["users"])


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_attribute(name: str, value: object) -> str | None:
    """What is wrong with one attribute, or None: names are 1-128 characters, values are
    strings (at most 1000 characters), finite numbers or booleans."""
    if not name or len(name) > EXTERNAL_ID_LENGTH:
        return f"attribute names must be 1 to {EXTERNAL_ID_LENGTH} characters, got {name!r:.40}"
    if isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"attribute {name!r} must be a finite number"
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            return f"attribute {name!r} is longer than {MAX_STRING_LENGTH} characters"
        return None
    return f"attribute {name!r} must be a string, a number or a boolean, not {_kind(value)}"


class UserIn(BaseModel):
    """A user's attributes; PUT replaces all of them."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description="strings, numbers and booleans by name (strings are categories)",
        examples=[{"age": 34, "country": "FR", "subscriber": True}],
    )

    @field_validator("attributes")
    @classmethod
    def _scalars(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        problems = [p for n, v in attributes.items() if (p := check_attribute(n, v)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return attributes


class UserOut(BaseModel):
    """A user's attributes."""

    user: str
    attributes: dict[str, Any]
    updated_at: datetime | None = Field(description="when the attributes were last set")


def _user_out(stored: StoredAttributes) -> UserOut:
    return UserOut(user=stored.user, attributes=stored.attributes, updated_at=stored.updated_at)


@router.put(
    "/users/{user}",
    summary="Create a user or replace their attributes",
    responses={201: {"model": UserOut, "description": "user created"}},
)
def put_user(user: UserPath, body: UserIn, session: WriteSessionDep, response: Response) -> UserOut:
    """Set the user's attributes (absent ones are cleared); 201 when the user is new."""
    stored, created = put_user_attributes(session, user, body.attributes, now=datetime.now(UTC))
    if created:
        response.status_code = status.HTTP_201_CREATED
    return _user_out(stored)


@router.get("/users/{user}", summary="A user's attributes")
def get_user(user: UserPath, session: SessionDep) -> UserOut:
    """The user's attributes (empty when never set); 404 for an unknown user."""
    stored = get_user_attributes(session, user)
    if stored is None:
        raise NotFoundError(f"unknown user {user!r}")
    return _user_out(stored)
