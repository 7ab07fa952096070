"""When a failed call is tried again, and after how long."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import httpx

logger = logging.getLogger("mfserve_client")

RETRIED_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)
"""Connection failures worth another try: refused or reset connections, a server that closed
the connection before answering (such as one restarting). A read timeout is not among them:
the service may still be working on the request."""

RETRIED_STATUSES = frozenset({503})
"""The service answers 503 while it cannot serve for a while (database busy, no model yet)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls (GET, PUT, DELETE and the read-only POSTs) after a 503 or a
    connection failure, with exponential backoff; other calls are never retried.

    The n-th retry waits `backoff * 2**(n-1)` seconds, at most `max_backoff`, scaled by a random
    factor in [0.5, 1] so that many clients do not retry in step; a `Retry-After` header given
    in seconds is honoured up to `max_backoff`.
    """

    max_retries: int = 3
    """Tries after the first one; 0 turns retries off."""
    backoff: float = 0.25
    """Seconds before the first retry."""
    max_backoff: float = 8.0
    """Longest wait between two tries, in seconds."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")

    def delay(self, retry: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        if response is not None:
            hinted = _retry_after(response)
            if hinted is not None:
                return min(hinted, self.max_backoff)
        base = min(self.backoff * 2.0 ** (retry - 1), self.max_backoff)
        return base * (0.5 + random.random() / 2)

    def should_retry_status(self, idempotent: bool, retry: int, status_code: int) -> bool:
        """Whether a reply with this status is tried again."""
        return idempotent and retry <= self.max_retries and status_code in RETRIED_STATUSES

    def should_retry_error(self, idempotent: bool, retry: int, error: Exception) -> bool:
        """Whether a call that failed with this transport error is tried again."""
        return idempotent and retry <= self.max_retries and isinstance(error, RETRIED_ERRORS)


NO_RETRIES = RetryPolicy(max_retries=0)
"""A policy that never retries."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds: float = float(value)
    except ValueError:
        return None  # an HTTP date: rare for this service, the backoff applies
    return max(seconds, 0.0)


def log_retry(method: str, url: str, retry: int, delay: float, reason: str) -> None:
    """Note a retry in the `mfserve_client` logger (level INFO)."""
    logger.info("retry %d of %s %s in %.2f s after %s", retry, method, url, delay, reason)
