"""Retries, connection failures and timeouts of the client against real processes and sockets:
a 503 `no_model` until a worker trains a model, a server that starts after the client began
calling, a port nobody listens on, and a socket that never answers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mfserve_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    Recommendation,
    RetryPolicy,
)

from tests.client.conftest import QUICK_CONFIG, TOKEN, service_env
from tests.support.postgres import free_port
from tests.support.server import REPO_ROOT, run_api_process
from tests.support.worker import run_worker_process
from tests.worker.conftest import store_ratings

PATIENT = RetryPolicy(max_retries=10_000, backoff=0.05, max_backoff=0.3)
"""Retries for as long as a test needs (each test bounds its wait for a result itself)."""
QUICK = RetryPolicy(max_retries=3, backoff=0.01, max_backoff=0.01)


class RetryLog(logging.Handler):
    """Collects the client's retry log lines and signals the first one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.first.set()


@pytest.fixture
def retry_log() -> Iterator[RetryLog]:
    """The retry lines the `mfserve_client` logger writes during the test."""
    logger = logging.getLogger("mfserve_client")
    handler = RetryLog()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Background:
    """Runs one function in a thread and keeps its result or exception."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as error:
            self.error = error

    def join(self, timeout: float) -> Any:
        """The function's result (its exception re-raised); fails if it is still running."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def test_no_model_is_retried_until_a_worker_has_trained_one(
    database_url: str, engine: Any, tmp_path: Path, retry_log: RetryLog
) -> None:
    store_ratings(engine)
    env = service_env(tmp_path / "artifacts")
    with (
        run_api_process(database_url, env=env) as server,
        Client(server.base_url, api_key=TOKEN, retry=PATIENT) as api,
    ):
        job_id = api.retrain("als-biased", QUICK_CONFIG).job_id  # queued: no worker runs yet
        waiting = Background(lambda: api.recommend("u0", n=3))
        assert retry_log.first.wait(60), "the client never retried"
        assert "503" in retry_log.messages[0]
        assert "no_model" in retry_log.messages[0]
        with run_worker_process(database_url, env=env):
            rec = waiting.join(180)
        assert isinstance(rec, Recommendation)
        assert (rec.user, rec.model_version, len(rec.items)) == ("u0", 1, 3)
        assert api.job(job_id).version == 1


@contextmanager
def api_on_port(port: int, database_url: str, env: dict[str, str]) -> Iterator[None]:
    """`python -m service api` on a given port until the block ends."""
    environment = {
        **os.environ,
        "MFSERVE_DATABASE_URL": database_url,
        "MFSERVE_LOG_LEVEL": "warning",
        "MFSERVE_AUTH": "off",  # the data calls here carry no key (see tests/support/server.py)
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    command = [sys.executable, "-m", "service", "api", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=None
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_connection_errors_are_retried_until_the_server_is_up(
    database_url: str, tmp_path: Path, retry_log: RetryLog
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"

    async def readiness_and_items() -> tuple[bool, list[str]]:
        async with AsyncClient(base_url, retry=PATIENT) as api:
            ready = (await api.readiness()).ready
            return ready, [item.item async for item in api.items()]

    with Client(base_url, retry=PATIENT) as api:
        health = Background(api.health)
        ready_and_items = Background(lambda: asyncio.run(readiness_and_items()))
        assert retry_log.first.wait(60)
        assert "ConnectError" in retry_log.messages[0]
        with api_on_port(port, database_url, service_env(tmp_path / "artifacts")):
            assert health.join(120).status == "ok"
            assert ready_and_items.join(120) == (True, [])


def test_calls_that_write_are_not_retried(retry_log: RetryLog) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(nobody, api_key=TOKEN, retry=QUICK) as api:
        writes = [
            lambda: api.post_ratings([("u", "i", 4.0)]),
            lambda: api.post_rating("u", "i"),
            lambda: api.retrain(),
            lambda: api.cancel_job(1),
            lambda: api.activate(1),
        ]
        for write in writes:
            with pytest.raises(APIConnectionError):
                write()
        assert retry_log.messages == []
        reads = [
            lambda: api.get_item("i"),
            lambda: api.put_item("i"),
            lambda: api.delete_user("u"),
            lambda: api.recommend_history(["i"]),
            lambda: api.scores("u", items=["i"]),
            lambda: api.fold_in(["i"]),
        ]
        for read in reads:
            with pytest.raises(APIConnectionError) as caught:
                read()
            assert not isinstance(caught.value, APITimeoutError)
        assert len(retry_log.messages) == QUICK.max_retries * len(reads)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose socket accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_a_server_that_does_not_answer_times_out(silent_port: int, retry_log: RetryLog) -> None:
    base_url = f"http://127.0.0.1:{silent_port}"
    with Client(base_url, timeout=0.2, retry=QUICK) as api, pytest.raises(APITimeoutError):
        api.recommend("u0")

    async def call() -> None:
        async with AsyncClient(base_url, timeout=0.2, retry=QUICK) as api:
            await api.health()

    with pytest.raises(APITimeoutError):
        asyncio.run(call())
    assert retry_log.messages == []  # the service may still be working: a read timeout is final
