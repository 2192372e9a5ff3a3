"""What a provider's HTTP calls may do: timeouts, retries, limits and breaker settings (`HttpPolicy`), and
the rules that decide from a typed error whether to retry, how long to wait and whether the breaker counts it.

Retries are tenacity's (full-jitter exponential backoff); a rate limit waits the provider's Retry-After
instead (parsed by urllib3's `Retry.parse_retry_after`), unless it exceeds `max_retry_after`. Retried:
RateLimitError (while `retryable`), ProviderUnavailableError, and MalformedPayloadError only when the
body was truncated in transit (a complete invalid body comes back the same). BadRequestError,
EntitlementError, CircuitOpenError and QuotaStoreError are never retried. The breaker counts transport
failures only (ProviderUnavailableError, a truncated body): any other answer means the source is alive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tenacity
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from mdpipeline.env_numbers import env_number
from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import MalformedPayloadError, ProviderUnavailableError, RateLimitError
from mdpipeline.providers.limits import zone

DEFAULT_DEADLINE = 300.0  # seconds for a whole response (a slow-drip body never trips the per-read timeout)
_RETRY_AFTER = Retry(retry_after_max=10**9)  # parsing only; the policy's max_retry_after decides
_DECIMAL = re.compile(r"\s*\d+\.\d*\s*")  # fractional seconds: not RFC 9110, but some gateways send them


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts, retries, limits and breaker settings of one provider (from the universe file)."""

    timeout: float = 10.0  # seconds to connect, and between bytes when reading (requests semantics)
    deadline: float | None = None  # seconds for a whole response, body included; None: MDP_HTTP_DEADLINE or 300
    max_attempts: int = 5
    backoff_initial: float = 0.5  # tenacity wait_random_exponential multiplier
    backoff_max: float = 30.0
    rate_per_second: float | None = None  # token bucket refill; None = unlimited
    burst: int = 1
    daily_limit: int | None = None  # hard cap per provider day, counted per request (shared via the database)
    quota_timezone: str = "UTC"  # where the provider's day starts (its documented reset), e.g. America/New_York
    max_concurrent: int | None = None
    breaker_fail_max: int = 5
    breaker_reset_timeout: float = 60.0
    max_retry_after: float = 120.0  # honour Retry-After up to this; longer -> RateLimitError at once

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **defaults: Any) -> HttpPolicy:
        """A policy from a provider's universe options (`http:` mapping), over per-provider defaults."""
        given = options.get("http") or {}
        if not isinstance(given, Mapping):
            raise ProviderError(f"provider option 'http' must be a mapping, got {type(given).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ProviderError(
                f"unknown http policy option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{**defaults, **given})

    def __post_init__(self) -> None:
        zone(self.quota_timezone)

    def response_deadline(self) -> float:
        """Seconds a whole response may take: `deadline`, else $MDP_HTTP_DEADLINE, else 300."""
        if self.deadline is not None:
            return self.deadline
        seconds = env_number("MDP_HTTP_DEADLINE")
        return DEFAULT_DEADLINE if seconds is None else seconds

    def retrying(self, sleep: Callable[[float], None],
                 before_sleep: Callable[[tenacity.RetryCallState], None]) -> tenacity.Retrying:
        """A tenacity retry loop for one call under this policy."""
        backoff = tenacity.wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                return exc.retry_after
            return float(backoff(state))

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.max_attempts)),
            retry=tenacity.retry_if_exception(is_retryable),
            wait=wait, sleep=sleep, before_sleep=before_sleep, reraise=True)

    def cap_retry_after(self, exc: RateLimitError) -> None:
        """A Retry-After beyond `max_retry_after` is not waited for: the error becomes final, saying why."""
        if exc.retry_after is not None and exc.retry_after > self.max_retry_after and exc.retryable:
            exc.retryable = False
            exc.args = (f"{exc.args[0] if exc.args else exc} (asked to wait {exc.retry_after:g}s, more than "
                        f"max_retry_after {self.max_retry_after:g}s)",)


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may get a different answer (see the module docstring)."""
    if isinstance(exc, RateLimitError):
        return exc.retryable
    if isinstance(exc, MalformedPayloadError):
        return exc.truncated
    return isinstance(exc, ProviderUnavailableError)


def counts_for_breaker(exc: BaseException) -> bool:
    """Transport failures trip the breaker; any real answer from the provider does not."""
    return isinstance(exc, ProviderUnavailableError) or (isinstance(exc, MalformedPayloadError) and exc.truncated)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date, by urllib3); None when
    absent or invalid."""
    if not value or not value.strip():
        return None
    if _DECIMAL.fullmatch(value):
        return float(value)
    try:
        return float(_RETRY_AFTER.parse_retry_after(value))
    except (InvalidHeader, TypeError, ValueError, OverflowError):
        return None


__all__ = ["DEFAULT_DEADLINE", "HttpPolicy", "counts_for_breaker", "is_retryable", "parse_retry_after"]
