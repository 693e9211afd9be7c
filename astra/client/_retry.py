"""Retries with exponential backoff for provider calls (429 / 5xx / timeouts, Retry-After honoured).

The provider SDKs' own retries are switched off (``max_retries=0``) so that every provider
retries the same way, and tests can make the waits tiny.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from pydantic import BaseModel, Field

from astra.client._model import ModelError
from astra.errors import AstraError
from astra.records import InfraFault

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryPolicy(BaseModel):
    max_attempts: int = Field(default=5, ge=1)
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    jitter: float = Field(default=0.1, description="fraction of the delay added at random")


class RetryableError(AstraError):
    """Raised by an attempt that may succeed if repeated (429, 5xx, timeout, connection)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 fault: InfraFault = InfraFault.provider_error) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.fault = fault


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retryable_status(status: int | None) -> bool:
    return status is not None and (status in (408, 409, 425, 429) or status >= 500)


async def with_retries(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds; return (result, attempts). A final failure is ModelError."""
    last: RetryableError | None = None
    for n in range(1, policy.max_attempts + 1):
        try:
            return await attempt(), n
        except RetryableError as exc:
            last = exc
            if n == policy.max_attempts:
                break
            delay = min(policy.max_delay_s, policy.base_delay_s * (2 ** (n - 1)))
            delay *= 1 + policy.jitter * random.random()
            if exc.retry_after_s is not None:
                delay = max(delay, min(exc.retry_after_s, policy.max_retry_after_s))
            log.info("%s: attempt %d failed (%s); retrying in %.2f s", what, n, exc, delay)
            await anyio.sleep(delay)
    assert last is not None
    raise ModelError(
        f"{what}: failed after {policy.max_attempts} attempts: {last}", retryable=True, status=last.status,
        fault=last.fault,
    )
