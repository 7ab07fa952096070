"""The model version this process serves: loaded off the request path, checked, swapped atomically.

A `ModelRegistry` holds one reference to an immutable `ServedModel`. Its poll loop asks a
caller-supplied function which version is active (the database, in the service), and when that
differs from the one served it reads the artifact in a worker thread, verifies its sha256,
builds the version's serving tables there (the `build` it was given) and replaces the reference
in a single assignment. Request handlers read `registry.current` once and
use that object until they answer, so a request in flight finishes on the model it started with.

An artifact that cannot be used (sha256 mismatch, unreadable, malformed) is refused with one
error log line; the previous model keeps serving and the refused version is retried only after a
growing delay, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from service.ml.artifacts import ArtifactError, LoadedArtifact, SnapshotInfo, read_artifact
from service.ml.base import Recommender
from service.registry._tables import ServingTables

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 600.0
"""Longest wait before a refused artifact is tried again."""


class VersionRecord(Protocol):
    """What the registry needs to know about the active version (a database row, in practice)."""

    @property
    def version(self) -> int:
        """The version number."""

    @property
    def algorithm(self) -> str:
        """The model name, e.g. `als-biased`."""

    @property
    def artifact(self) -> str:
        """The artifact's file name, relative to the artifact directory."""

    @property
    def sha256(self) -> str:
        """The artifact's recorded sha256 (hex)."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version; never mutated after it is built."""

    version: int
    algorithm: str
    sha256: str
    model: Recommender[Any]
    fallback: Recommender[Any] | None
    """The popularity model packed with it, for users the model cannot score (may be None)."""
    snapshot: SnapshotInfo | None
    loaded_at: datetime
    tables: ServingTables | None = None
    """Its serving tables (built by the registry's `build` before the version is served)."""


@dataclass
class _Refusal:
    attempts: int
    retry_at: float
    reason: str


ArtifactReader = Callable[[Path, str], LoadedArtifact]
TableBuilder = Callable[[ServedModel], ServedModel]
"""Returns a loaded version with its serving tables built (runs in the loader thread)."""


class ModelRegistry:
    """The active model of this process, refreshed from `fetch_active` by a poll loop."""

    def __init__(
        self,
        fetch_active: Callable[[], VersionRecord | None],
        artifact_dir: Path,
        poll_interval_s: float = 2.0,
        retry_delay_s: float = 30.0,
        reader: ArtifactReader = read_artifact,
        build: TableBuilder | None = None,
    ) -> None:
        self._fetch_active = fetch_active
        self._artifact_dir = artifact_dir
        self._poll_interval_s = poll_interval_s
        self._retry_delay_s = retry_delay_s
        self._reader = reader
        self._build = build
        self._current: ServedModel | None = None
        self._refused: dict[tuple[int, str], _Refusal] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self.last_error: str | None = None
        """The newest refusal or poll failure, for health reports; None after a clean poll."""

    @property
    def current(self) -> ServedModel | None:
        """The model to serve now (read once per request), or None before any is loaded."""
        return self._current

    @property
    def version(self) -> int | None:
        """The version served now, or None."""
        current = self._current
        return None if current is None else current.version

    def is_refused(self, version: int, sha256: str) -> bool:
        """Whether this version's artifact was refused and not since loaded."""
        return (version, sha256) in self._refused

    def _load(self, record: VersionRecord) -> ServedModel:
        loaded = self._reader(self._artifact_dir / record.artifact, record.sha256)
        if loaded.model.name != record.algorithm:
            raise ArtifactError(
                f"artifact {record.artifact} holds model {loaded.model.name!r}, "
                f"but version {record.version} is recorded as {record.algorithm!r}"
            )
        served = ServedModel(
            version=record.version,
            algorithm=record.algorithm,
            sha256=record.sha256,
            model=loaded.model,
            fallback=loaded.fallback,
            snapshot=loaded.snapshot,
            loaded_at=datetime.now(UTC),
        )
        return served if self._build is None else self._build(served)

    async def refresh(self) -> bool:
        """Poll once: load and swap in the active version if it changed; True when swapped."""
        async with self._lock:
            try:
                record = await asyncio.to_thread(self._fetch_active)
            except Exception as exc:  # the database may be briefly away; keep serving
                self.last_error = f"cannot read the active model version: {exc}"
                log.warning("%s; still serving version %s", self.last_error, self.version)
                return False
            if record is None:
                return False
            current = self._current
            if (
                current is not None
                and current.version == record.version
                and current.sha256 == record.sha256
            ):
                return False
            key = (record.version, record.sha256)
            refusal = self._refused.get(key)
            if refusal is not None and time.monotonic() < refusal.retry_at:
                return False
            try:
                served = await asyncio.to_thread(self._load, record)
            except Exception as exc:
                attempts = 1 if refusal is None else refusal.attempts + 1
                delay = min(self._retry_delay_s * 2 ** (attempts - 1), MAX_RETRY_DELAY_S)
                self._refused[key] = _Refusal(attempts, time.monotonic() + delay, str(exc))
                self.last_error = f"refused model version {record.version}: {exc}"
                log.error(
                    "refused model version %d (%s, artifact %s): %s; still serving version %s; "
                    "next attempt in %.0f s",
                    record.version,
                    record.algorithm,
                    record.artifact,
                    exc,
                    self.version,
                    delay,
                )
                return False
            self._refused.pop(key, None)
            previous = self.version
            self._current = served  # the one atomic swap; in-flight requests keep their object
            self.last_error = None
            log.info(
                "now serving model version %d (%s), previously %s",
                served.version,
                served.algorithm,
                previous,
            )
            return True

    async def run(self) -> None:
        """Poll until `stop` is called."""
        if self._stopping is None or self._stopping.is_set():
            self._stopping = asyncio.Event()
        stopping = self._stopping
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        while not stopping.is_set():
            self._wakeup.clear()
            try:
                await self.refresh()
            except Exception:  # never let the loop die; the next poll tries again
                log.exception("model registry poll failed")
            waits = [
                asyncio.ensure_future(stopping.wait()),
                asyncio.ensure_future(self._wakeup.wait()),
            ]
            _done, pending = await asyncio.wait(
                waits, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    def wake(self) -> None:
        """Poll now instead of at the next interval; safe to call from any thread."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    def start(self) -> asyncio.Task[None]:
        """Start the poll loop as a task of the running event loop."""
        if self._task is None or self._task.done():
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self.run(), name="model-registry-poll")
        return self._task

    async def stop(self) -> None:
        """End the poll loop, letting a poll in progress finish (its database read or artifact
        load runs in a thread that cancelling would leave behind)."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._stopping is not None:
            self._stopping.set()
        await task

    def set_current(self, served: ServedModel) -> None:
        """Serve a model built elsewhere (tests, or a process that trained it itself); its
        tables are built here first when it has none."""
        if served.tables is None and self._build is not None:
            served = self._build(served)
        self._current = served

    async def replace_current(
        self, previous: ServedModel, update: Callable[[ServedModel], ServedModel | None]
    ) -> bool:
        """Swap in `update(previous)` (run in a thread; None: no change) while `previous` is
        still the one served; True when swapped."""
        async with self._lock:
            if self._current is not previous:
                return False
            updated = await asyncio.to_thread(update, previous)
            if updated is None:
                return False
            self._current = updated
            return True
