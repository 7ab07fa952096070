"""API keys: the `ApiKey` record (a sha256 of the secret, never the secret) and its queries.

Every function works inside the caller's transaction and never commits. A change of the key
set sends a PostgreSQL notification on commit, so every API process drops a revoked key at
once (`KEYS_CHANNEL`; a no-op on SQLite, where processes re-read the keys on an interval).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Integer, String, select, text, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.db.tables import Base

KEYS_CHANNEL = "mfserve_api_keys_changed"
"""PostgreSQL notification channel; the payload is the hash of a revoked key, or empty."""

KEY_NAME_LENGTH = 128
"""Longest key name, in characters."""

KEY_HASH_LENGTH = 64
"""Length of a key's hex sha256."""


class Scope(StrEnum):
    """What a key may do; `admin` implies every other scope."""

    INGEST = "ingest"
    READ = "read"
    SERVE = "serve"
    ADMIN = "admin"


class ApiKey(Base):
    """A key's name, scopes and times; the secret itself is only ever shown on creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_LENGTH))
    key_hash: Mapped[str] = mapped_column(String(KEY_HASH_LENGTH), unique=True)
    """Hex sha256 of the secret: keys are random and long, so no salt or slow hash is needed."""
    prefix: Mapped[str] = mapped_column(String(16))
    """The secret's first characters, to recognise a key in listings and logs."""
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    """Updated at most about once a minute per key and API process, off the request path."""
    revoked_at: Mapped[datetime | None]


def insert_key(
    session: Session, *, name: str, key_hash: str, prefix: str, scopes: list[str], now: datetime
) -> ApiKey:
    """Store a new key record and flush it (its `id` is set)."""
    key = ApiKey(
        name=name,
        key_hash=key_hash,
        prefix=prefix,
        scopes=scopes,
        created_at=now,
        last_used_at=None,
        revoked_at=None,
    )
    session.add(key)
    session.flush()
    notify_keys_changed(session, "")
    return key


def list_keys(session: Session) -> list[ApiKey]:
    """Every key record, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def get_key(session: Session, key_id: int) -> ApiKey | None:
    """One key record by id."""
    return session.get(ApiKey, key_id)


def revoke_key(session: Session, key: ApiKey, now: datetime) -> None:
    """Mark a key revoked (kept for the record) and announce it on commit."""
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
    notify_keys_changed(session, key.key_hash)


def active_keys(session: Session) -> list[tuple[int, str, list[str]]]:
    """(id, hash, scopes) of every key that is not revoked."""
    rows = session.execute(
        select(ApiKey.id, ApiKey.key_hash, ApiKey.scopes).where(ApiKey.revoked_at.is_(None))
    )
    return [(key_id, key_hash, list(scopes)) for key_id, key_hash, scopes in rows]


def record_last_use(session: Session, used: Iterable[tuple[int, datetime]]) -> None:
    """Set the last-use time of keys (never moving it backwards)."""
    for key_id, when in used:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < when))
            .values(last_used_at=when)
        )


def notify_keys_changed(session: Session, payload: str) -> None:
    """Announce (on commit) that the key set changed; a no-op except on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": KEYS_CHANNEL, "payload": payload},
        )
