"""Exceptions raised by the client: one class per kind of failure, each carrying the service's
error code (`{"error": <code>, "detail": ...}` replies) and, for a 422, the rows at fault."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from mfserve_client.models import IngestResult, Job


class ErrorDetail(BaseModel):
    """One problem of a 422 reply: the batch row (when the body was a batch), field and message."""

    model_config = ConfigDict(extra="allow", frozen=True)

    row: int | None = None
    field: str | None = None
    message: str


class MfserveError(Exception):
    """Base class of every error this client raises."""

    stored: IngestResult | None = None
    """Set by `post_ratings` when it split the ratings into batches: what the batches before the
    failing one stored (they stay stored; the failing batch and those after it stored nothing)."""


class APIConnectionError(MfserveError):
    """The service could not be reached (refused, reset, DNS), after any retries."""


class APITimeoutError(APIConnectionError):
    """The service did not answer within the client's timeout."""


class APIStatusError(MfserveError):
    """The service answered with an error status; `code` is its `error` field."""

    status_code: int
    code: str
    detail: Any
    body: Any

    def __init__(self, response: httpx.Response, body: Any) -> None:
        self.response = response
        self.status_code = response.status_code
        self.body = body
        if isinstance(body, dict):
            self.code = str(body.get("error", "http_error"))
            self.detail = body.get("detail")
        else:
            self.code = "http_error"
            self.detail = body
        request = response.request
        super().__init__(
            f"{request.method} {request.url.path} -> {self.status_code} {self.code}: {self.detail}"
        )


class BadRequestError(APIStatusError):
    """400: the request could not be understood (such as malformed JSON)."""


class AuthenticationError(APIStatusError):
    """401: the call needs an API key (`Authorization: Bearer <key>`) and none was sent."""


class PermissionDeniedError(APIStatusError):
    """403: the API key was refused."""


class NotFoundError(APIStatusError):
    """404: an unknown user, item, rating, job or version (or the admin API is off)."""


class ConflictError(APIStatusError):
    """409: the call conflicts with the current state (such as cancelling an ended job)."""


class PayloadTooLargeError(APIStatusError):
    """413: the body is larger than the service's `MFSERVE_MAX_BODY_BYTES`."""


class InvalidInputError(APIStatusError):
    """422: wrong types or values; `errors` names each bad field (and row, for a batch)."""

    errors: list[ErrorDetail]
    error_count: int

    def __init__(self, response: httpx.Response, body: Any) -> None:
        super().__init__(response, body)
        detail = self.detail if isinstance(self.detail, list) else []
        self.errors = [
            ErrorDetail.model_validate(item) for item in detail if isinstance(item, dict)
        ]
        count = body.get("error_count") if isinstance(body, dict) else None
        self.error_count = count if isinstance(count, int) else len(self.errors)

    def __str__(self) -> str:
        request = self.response.request
        problems = "; ".join(_describe(error) for error in self.errors) or str(self.detail)
        more = self.error_count - len(self.errors)
        suffix = f" (and {more} more)" if more > 0 else ""
        return f"{request.method} {request.url.path} -> 422 {self.code}: {problems}{suffix}"

    def shift_rows(self, offset: int) -> None:
        """Make row indices count from `offset` (a batch's position in the caller's list)."""
        self.errors = [
            error if error.row is None else error.model_copy(update={"row": error.row + offset})
            for error in self.errors
        ]

    @property
    def rows(self) -> dict[int, list[ErrorDetail]]:
        """The problems of a batch, by the index of the row they concern."""
        found: dict[int, list[ErrorDetail]] = {}
        for error in self.errors:
            if error.row is not None:
                found.setdefault(error.row, []).append(error)
        return found


def _describe(error: ErrorDetail) -> str:
    where = error.field or "?"
    if error.row is not None:
        where = f"row {error.row} {where}"
    return f"{where}: {error.message}"


class InternalServerError(APIStatusError):
    """500 or another 5xx without a class of its own: a fault of the service."""


class ServiceUnavailableError(APIStatusError):
    """503: the service cannot answer right now (database unreachable or busy), after retries."""


class NoModelError(ServiceUnavailableError):
    """503 `no_model`: no model version has been trained and activated yet."""


class UnexpectedReplyError(MfserveError):
    """A successful status whose body is not what the call returns (such as a proxy's page)."""

    def __init__(self, response: httpx.Response, problem: Exception) -> None:
        self.response = response
        self.status_code = response.status_code
        request = response.request
        super().__init__(
            f"{request.method} {request.url.path} -> {self.status_code} with a body that is not "
            f"the expected reply: {problem}"
        )


class JobFailedError(MfserveError):
    """A job awaited by `wait_for_job` ended `failed` or `cancelled`; `job` is its last state."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} ended {job.status}: {job.error}")


class JobWaitTimeoutError(MfserveError):
    """A job awaited by `wait_for_job` had not ended within the given time; `job` is its state."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} is still {job.status} after {timeout} s")


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception that an error reply stands for."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    if (
        cls is ServiceUnavailableError
        and isinstance(body, dict)
        and body.get("error") == "no_model"
    ):
        cls = NoModelError
    return cls(response, body)
