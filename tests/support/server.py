"""Start `python -m service api` as a real subprocess on a free port and wait until it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.postgres import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ApiProcess:
    """A running API server: its base URL, process and log file."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_api_process(
    database_url: str,
    *,
    env: Mapping[str, str] | None = None,
    with_worker: bool = False,
    startup_timeout: float = 60.0,
) -> Iterator[ApiProcess]:
    """Run the API against `database_url` (already migrated) until the block ends.

    `env` adds or overrides `MFSERVE_*` variables; the data API is open (`MFSERVE_AUTH=off`)
    unless `env` says otherwise. The server is stopped with SIGTERM (then
    SIGKILL) afterwards; its output is kept in a temporary log file while it runs.
    """
    port = free_port()
    environment = {
        **os.environ,
        "MFSERVE_DATABASE_URL": database_url,
        "MFSERVE_LOG_LEVEL": "warning",
        "MFSERVE_AUTH": "off",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    command = [sys.executable, "-m", "service", "api", "--host", "127.0.0.1", "--port", str(port)]
    if with_worker:
        command.append("--with-worker")
    with tempfile.TemporaryDirectory(prefix="mfserve-api-") as tmp:
        log_path = Path(tmp) / "api.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
            server = ApiProcess(f"http://127.0.0.1:{port}", process, log_path)
            try:
                _wait_until_serving(server, startup_timeout)
                yield server
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_serving(server: ApiProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"the API exited with {server.process.returncode}:\n{server.log()}"
                )
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not serve within {timeout} s:\n{server.log()}")
            time.sleep(0.1)
