"""The client against a real HTTP server that answers what a test tells it (a stand-in for a
gateway or a service in trouble): which replies are retried, how often, and what is raised."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mfserve_client import (
    Client,
    InternalServerError,
    RetryPolicy,
    ServiceUnavailableError,
    UnexpectedReplyError,
)

Reply = tuple[int, dict[str, str], bytes]
QUICK = RetryPolicy(max_retries=3, backoff=0.01, max_backoff=0.01)
OK = (200, {"Content-Type": "application/json"}, b'{"status": "ok"}')
BUSY = (
    503,
    {"Content-Type": "application/json", "Retry-After": "0"},
    json.dumps({"error": "unavailable", "detail": "the database is busy; retry"}).encode(),
)
PAGE = (200, {"Content-Type": "text/html"}, b"<html>sign in</html>")
BAD_GATEWAY = (502, {"Content-Type": "text/html"}, b"<html>502 Bad Gateway</html>")


class Scripted(ThreadingHTTPServer):
    """Answers requests with the queued replies in order (the last one repeats) and logs them."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = []
        self.seen: list[str] = []

    @property
    def base_url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_reply(self, request: str) -> Reply:
        """The reply to `request`, which is logged."""
        self.seen.append(request)
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, headers, body = self.server.next_reply(f"{self.command} {self.path}")
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 (the names http.server calls)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """A running scripted server."""
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_503_is_retried_until_the_service_answers(scripted: Scripted) -> None:
    scripted.replies = [BUSY, BUSY, OK]
    with Client(scripted.base_url, retry=QUICK) as api:
        assert api.health().status == "ok"
    assert scripted.seen == ["GET /healthz"] * 3


def test_retries_stop_after_max_retries(scripted: Scripted) -> None:
    scripted.replies = [BUSY]
    with Client(scripted.base_url, retry=QUICK) as api, pytest.raises(ServiceUnavailableError) as e:
        api.get_item("x")
    assert (e.value.code, e.value.detail) == ("unavailable", "the database is busy; retry")
    assert len(scripted.seen) == 1 + QUICK.max_retries


def test_read_only_posts_are_retried_and_writes_are_not(scripted: Scripted) -> None:
    scripted.replies = [BUSY]
    with Client(scripted.base_url, retry=QUICK) as api:
        with pytest.raises(ServiceUnavailableError):
            api.scores("u", items=["x"])
        assert scripted.seen == ["POST /scores"] * 4
        scripted.seen.clear()
        for write in (
            lambda: api.post_ratings([("u", "x")]),
            lambda: api.retrain(),
            lambda: api.cancel_job(3),
            lambda: api.activate(2),
        ):
            with pytest.raises(ServiceUnavailableError):
                write()
        assert scripted.seen == [
            "POST /ratings",
            "POST /admin/retrain",
            "POST /admin/jobs/3/cancel",
            "POST /admin/models/2/activate",
        ]


def test_replies_that_are_not_the_services(scripted: Scripted) -> None:
    scripted.replies = [BAD_GATEWAY]
    with Client(scripted.base_url, retry=QUICK) as api:
        with pytest.raises(InternalServerError) as gateway:
            api.recommend("u")
        assert (gateway.value.status_code, gateway.value.code) == (502, "http_error")
        assert "Bad Gateway" in gateway.value.detail
        assert len(scripted.seen) == 1  # only a 503 is retried
        scripted.replies = [PAGE]
        with pytest.raises(UnexpectedReplyError) as page:
            api.recommend("u")
        assert page.value.status_code == 200
