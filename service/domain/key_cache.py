"""Who may call what, decided in memory: the valid keys of this process and the check per call.

A request's key is hashed and looked up in a dictionary that a background task replaces from
the database every `MFSERVE_KEY_REFRESH_INTERVAL` seconds; on PostgreSQL a notification also
drops a revoked key at once on every API process. A call reads and writes nothing: last-use
times are collected in memory (at most one per key a minute) and written by that same task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import keys as key_records
from service.db.keys import KEYS_CHANNEL, Scope
from service.db.notifications import listen
from service.db.session import transaction
from service.domain.keys import hash_key
from service.errors import ForbiddenError, UnauthorizedError

log = logging.getLogger(__name__)

NEW_KEY_GRACE_S = 30.0
"""A key this process just created is served even while a re-read started before its commit
does not show it yet, for this long."""

LAST_USE_RESOLUTION_S = 60.0
"""A key's last-use time is recorded at most once per this many seconds (per process)."""

ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one credential may do: the key's id (None: the admin token) and its scopes."""

    key_id: int | None
    key_hash: str
    scopes: frozenset[Scope]


def grant_of(key_id: int, key_hash: str, scopes: list[str]) -> Grant:
    """The grant of a stored key; `admin` implies every scope."""
    named = frozenset(Scope(value) for value in scopes if value in Scope.__members__.values())
    return Grant(key_id, key_hash, ALL_SCOPES if Scope.ADMIN in named else named)


class KeyRing:
    """The valid keys of this process by hash; the whole table is swapped on each reload."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Grant] = {}
        self._revoked: set[str] = set()
        self._new: dict[str, tuple[Grant, float]] = {}
        self._marked: dict[int, float] = {}
        self._used: dict[int, datetime] = {}

    def find(self, token: str) -> Grant | None:
        """The grant of a presented key, or None for an unknown or revoked one."""
        key_hash = hash_key(token)
        grant = self._by_hash.get(key_hash)
        if grant is None or not hmac.compare_digest(grant.key_hash, key_hash):
            return None
        return grant

    def replace(self, keys: list[tuple[int, str, list[str]]]) -> None:
        """Serve exactly these (id, hash, scopes); a key revoked meanwhile stays out."""
        revoked = self._revoked
        by_hash = {
            key_hash: grant_of(key_id, key_hash, scopes)
            for key_id, key_hash, scopes in keys
            if key_hash not in revoked
        }
        now = time.monotonic()
        self._new = {h: new for h, new in self._new.items() if now - new[1] < NEW_KEY_GRACE_S}
        for key_hash, (grant, _created) in self._new.items():
            if key_hash not in revoked:
                by_hash.setdefault(key_hash, grant)
        self._by_hash = by_hash

    def add(self, key_id: int, key_hash: str, scopes: list[str]) -> None:
        """Serve one new key at once (in the process that created it)."""
        grant = grant_of(key_id, key_hash, scopes)
        self._new = {**self._new, key_hash: (grant, time.monotonic())}
        self._by_hash = {**self._by_hash, key_hash: grant}

    def drop(self, key_hash: str) -> None:
        """Refuse a revoked key from now on (revocation is permanent)."""
        self._revoked.add(key_hash)
        if key_hash in self._by_hash:
            self._by_hash = {h: g for h, g in self._by_hash.items() if h != key_hash}

    def mark_used(self, grant: Grant) -> None:
        """Remember that a key was used now, at most once per LAST_USE_RESOLUTION_S."""
        if grant.key_id is None:
            return
        now = time.monotonic()
        if now - self._marked.get(grant.key_id, -LAST_USE_RESOLUTION_S) >= LAST_USE_RESOLUTION_S:
            self._marked[grant.key_id] = now
            self._used[grant.key_id] = datetime.now(UTC)

    def take_used(self) -> list[tuple[int, datetime]]:
        """The last-use times collected since the previous call."""
        used, self._used = self._used, {}
        return list(used.items())


class Authenticator:
    """Checks a request's `Authorization` header against the scope its route needs."""

    def __init__(self, *, keys_required: bool, admin_token: str | None, ring: KeyRing) -> None:
        self.keys_required = keys_required
        self.ring = ring
        self._admin_token = None if admin_token is None else admin_token.encode()

    def check(self, authorization: str | None, scope: Scope) -> None:
        """Return when the credential carries `scope`; 401 without one, 403 otherwise.

        With `MFSERVE_AUTH=off` only the admin scope needs a credential.
        """
        if not self.keys_required and scope is not Scope.ADMIN:
            return
        token = _bearer_token(authorization)
        if token is None:
            raise UnauthorizedError(
                "an API key is required: Authorization: Bearer <key> "
                f"(a key with the {scope.value!r} scope, or MFSERVE_ADMIN_TOKEN)"
            )
        admin = self._admin_token
        if admin is not None and hmac.compare_digest(token.encode("utf-8", "replace"), admin):
            return
        grant = self.ring.find(token)
        if grant is None:
            raise ForbiddenError("the key is not valid (unknown or revoked)")
        if scope not in grant.scopes:
            raise ForbiddenError(f"the key lacks the {scope.value!r} scope")
        self.ring.mark_used(grant)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def sync_ring(
    ring: KeyRing, sessions: sessionmaker[Session], write_sessions: sessionmaker[Session]
) -> None:
    """Write the collected last-use times, then reload the valid keys."""
    used = ring.take_used()
    if used:
        with transaction(write_sessions) as session:
            key_records.record_last_use(session, used)
    with transaction(sessions) as session:
        keys = key_records.active_keys(session)
    ring.replace(keys)


@asynccontextmanager
async def key_authenticator(
    settings: Settings, sessions: sessionmaker[Session], write_sessions: sessionmaker[Session]
) -> AsyncIterator[Authenticator]:
    """The lifespan part that loads the keys, keeps them fresh and checks every request."""
    ring = KeyRing()
    await asyncio.to_thread(sync_ring, ring, sessions, write_sessions)
    token = settings.admin_token
    authenticator = Authenticator(
        keys_required=settings.auth == "keys",
        admin_token=None if token is None else token.get_secret_value(),
        ring=ring,
    )
    if settings.auth == "off":
        log.warning(
            "MFSERVE_AUTH=off: ratings, metadata and recommendations are open to anyone who "
            "can reach this port (the admin API still needs a credential)"
        )
    wake = asyncio.Event()
    stopping = asyncio.Event()

    def on_notice(payload: str) -> None:
        if payload:
            ring.drop(payload)  # before anything else: a revoked key is refused from now on
        wake.set()

    listener = None
    if settings.database_url.startswith("postgresql"):
        listener = asyncio.create_task(
            listen(settings.database_url, KEYS_CHANNEL, on_notice), name="api-key-listener"
        )
    refresher = asyncio.create_task(
        _refresh(ring, sessions, write_sessions, settings.key_refresh_interval, wake, stopping),
        name="api-key-refresh",
    )
    try:
        yield authenticator
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        stopping.set()
        wake.set()
        await refresher
        with contextlib.suppress(Exception):  # last-use times are best effort
            await asyncio.to_thread(sync_ring, ring, sessions, write_sessions)


async def _refresh(
    ring: KeyRing,
    sessions: sessionmaker[Session],
    write_sessions: sessionmaker[Session],
    interval_s: float,
    wake: asyncio.Event,
    stopping: asyncio.Event,
) -> None:
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval_s)
        wake.clear()
        if stopping.is_set():
            return
        try:
            await asyncio.to_thread(sync_ring, ring, sessions, write_sessions)
        except Exception:  # the database may be briefly away; the keys in memory stay valid
            log.warning("API key refresh failed", exc_info=True)
