"""ASGI middleware that accepts request bodies only as `application/json` (415 otherwise).

Without it a `text/plain` body was parsed as JSON and stored: a browser sends such a request
cross-origin without a preflight, so any web page could write to a service on its network.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import UnsupportedMediaTypeError, error_response

JSON_MEDIA_TYPE = b"application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class JsonBodiesOnly:
    """415 for a POST, PUT or PATCH with a body whose Content-Type is not application/json
    (any parameters, such as a charset, allowed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a non-JSON body before the application reads it."""
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            content_type = b""
            has_body = False
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value
                elif name == b"content-length":
                    has_body = value.strip() not in (b"", b"0")
                elif name == b"transfer-encoding":
                    has_body = True
            if has_body and not is_json_media_type(content_type):
                response = error_response(
                    415, UnsupportedMediaTypeError.error, not_json_message(content_type)
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def not_json_message(content_type: bytes) -> str:
    """The 415 reply's detail for a body of this Content-Type."""
    shown = content_type.decode("latin-1") or "none"
    return f"the body must be Content-Type: application/json, got {shown}"


def is_json_media_type(content_type: bytes) -> bool:
    """Whether a Content-Type header names application/json (parameters ignored)."""
    return content_type.partition(b";")[0].strip().lower() == JSON_MEDIA_TYPE
