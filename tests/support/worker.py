"""Start `python -m service worker` as a real subprocess with its output in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """A running training worker: its process and log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill_9(self) -> None:
        """SIGKILL the worker: no cleanup, no last heartbeat."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not end within `timeout`."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def run_worker_process(
    database_url: str, *, env: Mapping[str, str] | None = None
) -> Iterator[WorkerProcess]:
    """Run a worker against `database_url` until the block ends (then SIGTERM it)."""
    environment = {
        **os.environ,
        "MFSERVE_DATABASE_URL": database_url,
        "MFSERVE_LOG_LEVEL": "info",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    with tempfile.TemporaryDirectory(prefix="mfserve-worker-") as tmp:
        log_path = Path(tmp) / "worker.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "worker"],
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            worker = WorkerProcess(process, log_path)
            try:
                yield worker
            finally:
                worker.stop()
