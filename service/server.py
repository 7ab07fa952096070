"""Running the API with uvicorn, optionally with the training worker as a child process."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from types import FrameType

import uvicorn

from service.app import create_app
from service.config import Settings
from service.db.migrations import SchemaNotCurrentError, check_schema
from service.db.session import create_db_engine

logger = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT = 30.0
"""Seconds the worker gets to finish after SIGTERM before it is killed."""


def start_worker() -> subprocess.Popen[bytes]:
    """Start `python -m service worker` as a child process (it reads the same environment)."""
    return subprocess.Popen([sys.executable, "-m", "service", "worker"])


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Ask the worker to stop, and kill it if it does not within WORKER_STOP_TIMEOUT."""
    if worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(WORKER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_api(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    with_worker: bool = False,
) -> int:
    """Serve the API until interrupted; returns the exit code (1: schema not migrated)."""
    engine = create_db_engine(settings.database_url)
    try:
        check_schema(engine)
    except SchemaNotCurrentError as exc:
        print(f"mfserve: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    worker = start_worker() if with_worker else None
    if worker is not None:
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown with the handlers it found
        # at start; with the default SIGTERM action that would end this process before `finally`
        # stops the worker, leaving it orphaned. A Python handler turns it into SystemExit.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        config = uvicorn.Config(
            create_app(settings),
            host=host or settings.host,
            port=port or settings.port,
            log_level=settings.log_level,
        )
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    finally:
        if worker is not None:
            stop_worker(worker)
