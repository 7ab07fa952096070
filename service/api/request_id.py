"""ASGI middleware that gives every request an id (`X-Request-ID`, the client's if it sent a
usable one) and returns it in the reply, so that a logged error can be found from its reply."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
"""A client's id is kept when it is 1 to 128 printable characters of this set."""


class RequestId:
    """Put the request's id in `request.state.request_id` and in the reply's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with its id attached."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = assign_request_id(scope, _client_id(scope))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _client_id(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return usable_client_id(value)
    return None


def usable_client_id(value: bytes) -> bytes | None:
    """The client's `X-Request-ID` value when it is usable as the request's id."""
    return value if _USABLE.fullmatch(value) else None


def assign_request_id(scope: Scope, client_id: bytes | None) -> bytes:
    """Record the request's id (the client's, else a new one) in its state; returns it."""
    request_id = client_id or _ids.next()
    scope.setdefault("state", {})["request_id"] = request_id.decode()
    return request_id


class _RequestIds:
    """New request ids: 16 random hex digits per process, then 16 of a counter.

    Unique like a uuid4 without reading the system's random source for every request.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = b""
        self._counter: Iterator[int] = iter(())

    def next(self) -> bytes:
        """A request id not given out before (32 hex digits)."""
        if self._pid != os.getpid():  # first use, or a forked child: a prefix of its own
            self._pid = os.getpid()
            self._prefix = os.urandom(8).hex().encode()
            self._counter = itertools.count()
        return self._prefix + b"%016x" % next(self._counter)


_ids = _RequestIds()
