"""Sending a `Call` over httpx, with retries, and mapping failures to the client's exceptions."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import httpx

from mfserve_client.calls import Call
from mfserve_client.errors import (
    APIConnectionError,
    APITimeoutError,
    UnexpectedReplyError,
    error_from_response,
)
from mfserve_client.retry import RetryPolicy, log_retry

T = TypeVar("T")

USER_AGENT = "mfserve-client/0.1.0"


def default_headers(api_key: str | None) -> dict[str, str]:
    """Headers sent with every request: the API key as a Bearer token, when there is one."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def http_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """An httpx timeout from seconds (for connect, read, write and pool alike) or as given."""
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def _request(http: httpx.Client | httpx.AsyncClient, call: Call[T]) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=call.params or None,
        json=call.body,
    )


def _finish(call: Call[T], response: httpx.Response) -> T:
    if response.is_success or response.status_code in call.accept:
        try:
            return call.read(response)
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            raise UnexpectedReplyError(response, error) from error
    raise error_from_response(response)


def _connection_error(call: Call[T], error: httpx.TransportError) -> APIConnectionError:
    kind = APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
    return kind(f"{call.method} {call.path}: {type(error).__name__}: {error}")


def _retried(policy: RetryPolicy, call: Call[T], retry: int, response: httpx.Response) -> bool:
    status = response.status_code
    if status in call.accept:
        return False
    return policy.should_retry_status(call.idempotent, retry, status)


def _status_reason(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:200]}"


def send(http: httpx.Client, policy: RetryPolicy, call: Call[T]) -> T:
    """Send `call`, retrying as the policy allows; its reply read, or the matching exception."""
    retry = 0
    while True:
        retry += 1
        try:
            response = http.send(_request(http, call))
        except httpx.TransportError as error:
            if not policy.should_retry_error(call.idempotent, retry, error):
                raise _connection_error(call, error) from error
            delay = policy.delay(retry)
            log_retry(call.method, call.path, retry, delay, repr(error))
        else:
            if not _retried(policy, call, retry, response):
                return _finish(call, response)
            delay = policy.delay(retry, response)
            log_retry(call.method, call.path, retry, delay, _status_reason(response))
        time.sleep(delay)


async def send_async(http: httpx.AsyncClient, policy: RetryPolicy, call: Call[T]) -> T:
    """Send `call` without blocking the event loop, retrying as the policy allows."""
    retry = 0
    while True:
        retry += 1
        try:
            response = await http.send(_request(http, call))
        except httpx.TransportError as error:
            if not policy.should_retry_error(call.idempotent, retry, error):
                raise _connection_error(call, error) from error
            delay = policy.delay(retry)
            log_retry(call.method, call.path, retry, delay, repr(error))
        else:
            if not _retried(policy, call, retry, response):
                return _finish(call, response)
            delay = policy.delay(retry, response)
            log_retry(call.method, call.path, retry, delay, _status_reason(response))
        await asyncio.sleep(delay)
