"""Typed provider errors: what went wrong decides whether a call is retried, trips the breaker, or fails
the partition at once.

Every class subclasses `ProviderError`, so callers that only care that a provider could not deliver
catch that. Messages never contain secrets (the HTTP client redacts them before raising).
"""

from __future__ import annotations

from mdpipeline.providers.base import ProviderError


class RateLimitError(ProviderError):
    """HTTP 429 or a provider rate-limit body (e.g. Alpha Vantage `Note`).

    `retry_after` is the delay the provider asked for, in seconds, when it said; `retryable` is False
    when waiting cannot help within a run (a daily quota is spent, or Retry-After exceeds the policy's
    `max_retry_after`). `daily` is True when the provider said its daily quota is spent: the HTTP
    client then marks the provider's shared daily quota as used up, so other processes stop asking.
    """

    def __init__(self, message: str, retry_after: float | None = None, *, retryable: bool = True,
                 daily: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable
        self.daily = daily


class ProviderUnavailableError(ProviderError):
    """5xx, timeouts, connection errors: the source is (for now) not answering. Retried; trips the breaker."""


class BadRequestError(ProviderError):
    """4xx other than 401/403/429, or a provider "invalid call" body: our request is wrong. Never retried."""


class EntitlementError(ProviderError):
    """401/403, "You don't have access to this resource", plan limits: the key may not do this. Never retried.

    `hint` says what would make the call possible (a plan, a parameter, a setting) when the provider's
    answer tells; it is also appended to the message, so logs and the CLI show it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{message} (hint: {hint})" if hint else message)
        self.hint = hint


class MalformedPayloadError(ProviderError):
    """A body that is not what the provider documents: invalid JSON, unexpected shape, or truncated.

    `truncated` is True when the transport saw fewer bytes than announced (the connection dropped
    mid-body); only then is the call retried, since a complete but invalid body comes back the same.
    """

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


class CircuitOpenError(ProviderError):
    """The provider's circuit breaker is open: the call was not made."""


class QuotaStoreError(ProviderError):
    """The database holding the shared request quotas cannot be used: the call was not made (sending it
    unaccounted could overrun a quota other processes share). Not retried, not counted by the breaker."""


__all__ = [
    "BadRequestError",
    "CircuitOpenError",
    "EntitlementError",
    "MalformedPayloadError",
    "ProviderError",
    "ProviderUnavailableError",
    "QuotaStoreError",
    "RateLimitError",
]
