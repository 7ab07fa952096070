"""The options a client keeps beside its connections, checked when the client is made."""

from __future__ import annotations

from dataclasses import dataclass

from mfserve_client.retry import RetryPolicy

MAX_PAGE_SIZE = 1000
"""The service's largest page (`limit`)."""


@dataclass(frozen=True)
class ClientOptions:
    """Where the service is, how calls are retried, and how lists and batches are cut."""

    base_url: str
    retry: RetryPolicy
    batch_size: int
    """Most ratings per `POST /ratings` (the service's `MFSERVE_MAX_BATCH_ROWS`)."""
    page_size: int
    """Rows per page of a list (1 to 1000)."""

    @classmethod
    def of(
        cls, base_url: str, retry: RetryPolicy | None, batch_size: int, page_size: int
    ) -> ClientOptions:
        """Checked options; a ValueError names the bad one."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}, got {page_size}")
        return cls(base_url.rstrip("/"), retry or RetryPolicy(), batch_size, page_size)
