"""The scope each route needs: `dependencies=[require_scope(Scope.X)]`, one line per route.

The check is `service.domain.key_cache.Authenticator` (in memory, no database access). Being
a security dependency, it also declares the bearer scheme in the OpenAPI document, so that
generated clients send keys.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from service.api.state import ServiceState
from service.db.keys import Scope

SCHEME_NAME = "apiKey"


class ScopeGuard(SecurityBase):
    """A route dependency: 401 without a credential, 403 for one without `scope`."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.scheme_name = SCHEME_NAME
        self.model = HTTPBearerModel(
            bearerFormat="API key",
            description="`Authorization: Bearer <key>`: an API key (`POST /admin/keys`, "
            "`mfserve keys create`) with the route's scope, or MFSERVE_ADMIN_TOKEN. Scopes: "
            "`ingest` (writes), `read` (stored ratings and metadata), `serve` (recommendations, "
            "scores, fold-in, similar items), `admin` (admin API and model list; implies all).",
        )

    async def __call__(self, request: Request) -> None:
        """Check the request's credential (async: no thread-pool hop on the serving path)."""
        authorize(request, self.scope)


def authorize(request: Request, scope: Scope) -> None:
    """Refuse the request unless its credential carries `scope` (for plain Starlette routes)."""
    authorization = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    cast(ServiceState, request.state.service).auth.check(authorization, scope)


def require_scope(scope: Scope) -> Any:
    """The dependency of a route that needs `scope`, for `dependencies=[...]`."""
    return Depends(ScopeGuard(scope))


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key (`unauthorized`)"},
    403: {"description": "the key is unknown, revoked or lacks the route's scope (`forbidden`)"},
}
"""The statuses every guarded route can answer (their error model is added by `openapi`)."""
