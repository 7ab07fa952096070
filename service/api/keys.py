"""Admin API for API keys: create (the secret shown once), list without secrets, revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.deps import SessionDep, StateDep, WriteSessionDep
from service.db.keys import KEY_NAME_LENGTH, ApiKey, Scope
from service.db.tables import MAX_ROW_ID
from service.domain import keys

router = APIRouter(
    tags=["admin"], dependencies=[require_scope(Scope.ADMIN)], responses=AUTH_RESPONSES
)

KeyId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="API key id")]


class KeyIn(BaseModel):
    """A key to create: a name for people and the scopes it grants."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=KEY_NAME_LENGTH,
        pattern="^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        examples=["shop-frontend"],
    )
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope), examples=[["serve"]])


class KeyOut(BaseModel):
    """A key without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str = Field(description="the secret's first characters")
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="recorded at most about once a minute")
    revoked_at: datetime | None


class KeyCreated(BaseModel):
    """A new key: `key` is its secret, shown in this reply only."""

    id: int
    name: str
    scopes: list[Scope]
    created_at: datetime
    key: str


class KeyList(BaseModel):
    """Every key, revoked ones included, oldest first."""

    items: list[KeyOut]


def _key_out(record: ApiKey) -> KeyOut:
    return KeyOut.model_validate(record)


@router.post("/admin/keys", status_code=status.HTTP_201_CREATED, summary="Create an API key")
def create_key(body: KeyIn, session: WriteSessionDep, state: StateDep) -> KeyCreated:
    """Store a key with `scopes` (`admin` implies all) and return its secret, once."""
    created = keys.create_key(session, body.name, body.scopes, datetime.now(UTC))
    record = created.record
    state.auth.ring.add(record.id, record.key_hash, record.scopes)
    return KeyCreated(
        id=record.id,
        name=record.name,
        scopes=[Scope(scope) for scope in record.scopes],
        created_at=record.created_at,
        key=created.secret,
    )


@router.get("/admin/keys", summary="List API keys")
def list_keys(session: SessionDep) -> KeyList:
    """Every key without its secret."""
    return KeyList(items=[_key_out(record) for record in keys.list_keys(session)])


@router.delete(
    "/admin/keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    responses={404: {"description": "unknown key"}},
)
def revoke_key(key_id: KeyId, session: WriteSessionDep, state: StateDep) -> Response:
    """Refuse the key from now on, on every API process (it stays listed, as revoked)."""
    record = keys.revoke_key(session, key_id, datetime.now(UTC))
    state.auth.ring.drop(record.key_hash)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
