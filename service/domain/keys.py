"""API key rules: create (the secret shown once), list, revoke; names and scopes checked (422).

A key is `mfs_` and 43 random URL-safe characters (256 bits). Only its sha256 is stored: with
that much entropy a salted slow hash adds nothing, and a lookup by hash needs no scan.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from service.db import keys as key_records
from service.db.keys import KEY_NAME_LENGTH, ApiKey, Scope
from service.db.tables import MAX_ROW_ID
from service.errors import InvalidInputError, NotFoundError

KEY_PREFIX = "mfs_"
"""Every key starts with this, so that a leaked one is easy to recognise (and to scan for)."""

SHOWN_PREFIX_LENGTH = 8
"""Characters of the secret kept in the clear, to tell keys apart in listings."""

_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class CreatedKey:
    """A new key's record and its secret (which is never stored and never shown again)."""

    record: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    """The stored form of a key: its hex sha256."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_scopes(values: Sequence[str]) -> list[Scope]:
    """The scopes named, each once, in a stable order (422 naming `scopes` otherwise)."""
    known = {scope.value: scope for scope in Scope}
    unknown = [value for value in values if value not in known]
    if not values or unknown:
        allowed = ", ".join(known)
        message = f"unknown scopes {unknown}" if unknown else "give at least one scope"
        raise InvalidInputError([{"field": "scopes", "message": f"{message}; one of {allowed}"}])
    return [scope for scope in Scope if scope.value in values]


def check_name(name: str) -> str:
    """The key's name: 1 to 128 characters without control characters (422 otherwise)."""
    if not name or len(name) > KEY_NAME_LENGTH or _CONTROL_CHARACTERS.search(name):
        raise InvalidInputError(
            [
                {
                    "field": "name",
                    "message": f"must be 1 to {KEY_NAME_LENGTH} characters, no control characters",
                }
            ]
        )
    return name


def create_key(session: Session, name: str, scopes: Sequence[str], now: datetime) -> CreatedKey:
    """Store a new key with `scopes` and return it with its secret."""
    checked_name = check_name(name)
    checked = check_scopes(scopes)
    secret = new_secret()
    record = key_records.insert_key(
        session,
        name=checked_name,
        key_hash=hash_key(secret),
        prefix=secret[:SHOWN_PREFIX_LENGTH],
        scopes=[scope.value for scope in checked],
        now=now,
    )
    return CreatedKey(record, secret)


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, without secrets."""
    return key_records.list_keys(session)


def revoke_key(session: Session, key_id: int, now: datetime) -> ApiKey:
    """Revoke a key (again: no change); 404 for an unknown id."""
    key = key_records.get_key(session, key_id) if 1 <= key_id <= MAX_ROW_ID else None
    if key is None:
        raise NotFoundError(f"unknown key {key_id}")
    key_records.revoke_key(session, key, now)
    return key
