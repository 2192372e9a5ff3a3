"""Request limits of a provider: a daily quota and a token bucket, held in this process or in a shared store.

`limits_for(provider, store)` gives the limiter the HTTP client consults before every attempt:
- with a `LimitsStore`, the store's limits: the database's (`mdpipeline.storage.provider_limits`, handed
  down by the layer that has the database URL), held in `ops.provider_quota` / `ops.provider_rate`, so
  every process and every run using that database shares them: a free Alpha Vantage key's 25 requests
  a day are 25 however many runs, workers or backfills ask, and its 5 a minute are spaced across all
  of them;
- without one, `LocalLimits`: the same limits counted in this process only (tests, replays, one-off use).

A daily quota is counted per provider day: midnight in the policy's `quota_timezone` (UTC unless the
provider documents another). When the provider itself answers that its daily quota is spent, the day
is marked exhausted (`exhaust()`), so other processes stop asking until its midnight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import RateLimitError


def zone(name: str) -> ZoneInfo:
    """The time zone `name` (IANA); ProviderError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ProviderError(f"unknown quota_timezone {name!r} (an IANA name, e.g. UTC or America/New_York)") from None


class TokenBucket:
    """A thread-safe token bucket that reserves: `reserve()` takes a token now and says how long to wait.

    Reserving (the balance may go negative) serves callers in order without a polling loop, and works
    with an injected fake `sleep` in tests.
    """

    def __init__(self, rate_per_second: float | None, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.configure(rate_per_second, burst)
        self._tokens = float(self.burst)
        self._updated = clock()

    def configure(self, rate_per_second: float | None, burst: int) -> None:
        """Change the refill rate and capacity (keeps the current balance, capped)."""
        if rate_per_second is not None and rate_per_second <= 0:
            raise ProviderError(f"rate_per_second must be positive or None, got {rate_per_second}")
        with self._lock:
            self.rate = rate_per_second
            self.burst = max(1, int(burst))
            if hasattr(self, "_tokens"):
                self._tokens = min(self._tokens, float(self.burst))

    def reserve(self) -> float:
        """Take one token; seconds the caller must wait before using it (0 when one was available)."""
        with self._lock:
            if self.rate is None:
                return 0.0
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class DailyQuota:
    """Requests per provider day, counted in this process (the provider's own answer stays authoritative)."""

    def __init__(self, limit: int | None, tz: str = "UTC") -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.tz = tz
        self._day = self._today()
        self.used = 0
        self.exhausted = False

    def _today(self) -> date:
        return datetime.now(zone(self.tz)).date()

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self.used, self.exhausted = today, 0, False

    def take(self, provider: str) -> None:
        """Count one request; RateLimitError (not retryable) when today's quota is spent."""
        with self._lock:
            self._roll()
            if self.exhausted or (self.limit is not None and self.used >= self.limit):
                raise quota_spent(provider, self.limit, self._day, self.tz, "in this process", self.exhausted)
            self.used += 1

    def exhaust(self) -> None:
        """The provider said today's quota is spent: refuse until its midnight."""
        with self._lock:
            self._roll()
            self.exhausted = True


def quota_spent(provider: str, limit: int | None, day: date, tz: str, where: str, exhausted: bool) -> RateLimitError:
    """The error for a spent daily quota: no request sent, when it resets, not retryable within the run."""
    midnight = datetime.combine(day + timedelta(days=1), clock_time(), zone(tz))
    why = ("the provider answered that its daily quota is spent" if exhausted or limit is None
           else f"daily limit of {limit} requests reached")
    return RateLimitError(
        f"{provider}: {why} for {day} ({tz} day, counted {where}); no request sent; the quota resets at "
        f"{midnight:%Y-%m-%d %H:%M} {tz}", retry_after=max(0.0, (midnight - datetime.now(UTC)).total_seconds()),
        retryable=False)


class Limits(Protocol):
    """A provider's daily quota and token bucket, as the HTTP client consults them before every attempt."""

    where: str  # where requests are counted, for the refusal message ("in this process", ...)

    def configure(self, rate_per_second: float | None, burst: int, daily_limit: int | None, tz: str) -> None:
        """Apply a policy's limits (the latest client's policy wins)."""
        ...

    def take(self) -> None:
        """Count one request against the daily quota; RateLimitError when it is spent."""
        ...

    def reserve(self) -> float:
        """Seconds to wait for the next token-bucket slot."""
        ...

    def exhaust(self) -> None:
        """The provider said today's quota is spent."""
        ...


class LocalLimits:
    """The daily quota and token bucket of one provider, in this process."""

    where = "in this process"

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.bucket: TokenBucket | None = None  # built full by the first policy
        self.quota = DailyQuota(None)

    def configure(self, rate_per_second: float | None, burst: int, daily_limit: int | None, tz: str) -> None:
        """Apply a policy's limits (the latest client's policy wins)."""
        if self.bucket is None:
            self.bucket = TokenBucket(rate_per_second, burst)
        else:
            self.bucket.configure(rate_per_second, burst)
        self.quota.limit, self.quota.tz = daily_limit, zone(tz).key

    def take(self) -> None:
        """Count one request against the daily quota; RateLimitError when it is spent."""
        self.quota.take(self.provider)

    def reserve(self) -> float:
        """Seconds to wait for the next token-bucket slot."""
        return self.bucket.reserve() if self.bucket is not None else 0.0

    def exhaust(self) -> None:
        """The provider said today's quota is spent."""
        self.quota.exhaust()


class LimitsStore(Protocol):
    """Where request limits are held for every process (the database: `mdpipeline.storage.provider_limits`).

    The layer that knows the database hands one to the providers; this layer only consults it.
    """

    def limits(self, provider: str) -> Limits:
        """The limits of `provider` held in this store."""
        ...


def limits_for(provider: str, store: LimitsStore | None) -> Limits:
    """The limits of `provider` held in `store` (shared by every process using it), else in this process."""
    return store.limits(provider) if store is not None else LocalLimits(provider)


__all__ = ["DailyQuota", "Limits", "LimitsStore", "LocalLimits", "TokenBucket", "limits_for", "quota_spent", "zone"]
