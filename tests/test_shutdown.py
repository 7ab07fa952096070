"""Graceful shutdown of a real API process: SIGTERM lets a request in flight finish and store."""

from __future__ import annotations

import json
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from service.db.session import create_db_engine
from tests.support.server import run_api_process

pytestmark = pytest.mark.slow

HANG_GUARD_S = 180.0
"""Only stops a hung test (a server that never stops listening or never exits)."""


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def test_sigterm_lets_a_request_in_flight_finish(database_url: str, tmp_path: object) -> None:
    rows = [{"user": "Zoë", "item": f"item-{k}", "rating": 4.5} for k in range(50)]
    body = json.dumps({"ratings": rows}).encode()
    with run_api_process(database_url, startup_timeout=HANG_GUARD_S) as server:
        url = urlsplit(server.base_url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        sock = socket.create_connection((host, port), timeout=HANG_GUARD_S)
        with sock:
            sock.sendall(
                b"POST /ratings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n".encode()
                + b"Expect: 100-continue\r\n\r\n"
            )
            # 100 Continue: the application is running this request and waits for its body
            assert _read_head(sock).startswith(b"HTTP/1.1 100 "), server.log()
            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + HANG_GUARD_S
            while _listening(host, port):  # the shutdown has begun: no new connections
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            assert server.process.poll() is None  # still finishing our request
            sock.sendall(body)
            reply = _read_all(sock)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201 "), reply
        assert json.loads(payload) == {"inserted": 50, "updated": 0, "ignored": 0}
        # uvicorn re-raises SIGTERM after its graceful shutdown
        assert server.process.wait(HANG_GUARD_S) in (0, -signal.SIGTERM), server.log()
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT count(*) FROM ratings")).scalar_one()
    finally:
        engine.dispose()
    assert stored == 50
