"""PostgreSQL LISTEN/NOTIFY for model activations, so API replicas swap without waiting a poll.

Activation sends `pg_notify` inside its own transaction, so the notice is delivered on commit and
only then. Each API process runs one listener thread with its own autocommit connection; a notice
wakes that process's registry poll. Polling stays the fallback (and the only way on SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

ACTIVATION_CHANNEL = "mfserve_model_activated"
RECONNECT_DELAY_S = 2.0
WAIT_SLICE_S = 0.5
"""How long one wait for notices lasts, so that `stop` takes effect within about this long."""


def notify_activation(session: Session, version: int) -> None:
    """Announce (on commit) that `version` became active; a no-op except on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": ACTIVATION_CHANNEL, "payload": str(version)},
        )


def libpq_dsn(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def listen(database_url: str, channel: str, on_notice: Callable[[str], None]) -> None:
    """Call `on_notice(payload)` on the event loop for every notice on `channel`, until
    cancelled (reconnecting after a lost connection).

    On the loop, not in a thread: a notice that arrives before a request is handled before it.
    """
    dsn = libpq_dsn(database_url)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=5
            ) as connection:
                await connection.execute(f"LISTEN {channel}")
                async for notice in connection.notifies():
                    on_notice(notice.payload)
        except psycopg.Error as exc:
            log.warning("listener of %s lost its connection (%s); reconnecting", channel, exc)
            await asyncio.sleep(RECONNECT_DELAY_S)


class ActivationListener:
    """A daemon thread that calls `on_activation(version)` for every activation notice."""

    def __init__(self, database_url: str, on_activation: Callable[[int], None]) -> None:
        self._dsn = libpq_dsn(database_url)
        self._on_activation = on_activation
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activation-listener", daemon=True)

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and close the connection (returns within about WAIT_SLICE_S)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10 * WAIT_SLICE_S)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {ACTIVATION_CHANNEL}")
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=WAIT_SLICE_S):
                            self._deliver(notice.payload)
            except psycopg.Error as exc:
                log.warning("activation listener lost its connection (%s); reconnecting", exc)
                self._stopping.wait(RECONNECT_DELAY_S)

    def _deliver(self, payload: str) -> None:
        try:
            version = int(payload)
        except ValueError:
            log.warning("ignored an activation notice with payload %r", payload)
            return
        self._on_activation(version)
