"""Request limits of a provider: a daily quota and a token bucket, held in this process or in the database.

`limits_for(provider, database_url)` gives the limiter the HTTP client consults before every attempt:
- with a database URL, `SharedLimits`: both limits live in `ops.provider_quota` / `ops.provider_rate`
  (see `mdpipeline.storage.provider_quota`), so every process and every run using that database shares
  them: a free Alpha Vantage key's 25 requests a day are 25 however many runs, workers or backfills
  ask, and its 5 a minute are spaced across all of them;
- without one, `LocalLimits`: the same limits counted in this process only (tests, replays, one-off use).

A daily quota is counted per provider day: midnight in the policy's `quota_timezone` (UTC unless the
provider documents another). When the provider itself answers that its daily quota is spent, the day
is marked exhausted (`exhaust()`), so other processes stop asking until its midnight.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import QuotaStoreError, RateLimitError
from mdpipeline.storage.database import connect
from mdpipeline.storage.provider_quota import exhaust_day, quota_today, reserve_slot, take_request

T = TypeVar("T")


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


class QuotaStore:
    """One connection to the database holding the shared limits, used by every provider of this process.

    Statements are short and serialised by a lock (requests themselves run outside it). A connection
    inherited through `fork` is never used nor closed by the child (that would end the parent's
    session): the child opens its own.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()

    def run(self, what: str, statement: Callable[[psycopg.Connection], T]) -> T:
        """Run `statement` on the store's connection (reconnecting once); QuotaStoreError when it cannot."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return statement(self._connection())
                except psycopg.errors.UndefinedTable:
                    raise QuotaStoreError(
                        f"{what}: the request-quota tables are missing: run `mdpipeline migrate`; "
                        "no request sent") from None
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == 2:
                        raise QuotaStoreError(f"{what}: the database holding the shared request quotas is "
                                              f"unreachable ({_first_line(exc)}); no request sent") from None
                except psycopg.Error as exc:
                    raise QuotaStoreError(f"{what}: the shared request quota could not be taken "
                                          f"({_first_line(exc)}); no request sent") from None
        raise AssertionError("unreachable")

    def _connection(self) -> psycopg.Connection:
        if self._pid != os.getpid():  # forked: leave the parent's connection alone
            _INHERITED.append(self._conn)
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held), the connection left alone."""
        self._lock = threading.Lock()
        if self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn, self._pid = None, os.getpid()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SharedLimits:
    """The daily quota and token bucket of one provider, held in the database for every process."""

    where = "in the database by every process"

    def __init__(self, provider: str, store: QuotaStore) -> None:
        self.provider = provider
        self.store = store
        self.rate: float | None = None
        self.burst = 1
        self.daily_limit: int | None = None
        self.tz = "UTC"

    def configure(self, rate_per_second: float | None, burst: int, daily_limit: int | None, tz: str) -> None:
        """Apply a policy's limits (the latest client's policy wins)."""
        if rate_per_second is not None and rate_per_second <= 0:
            raise ProviderError(f"rate_per_second must be positive or None, got {rate_per_second}")
        zone(tz)
        self.rate, self.burst, self.daily_limit, self.tz = rate_per_second, max(1, int(burst)), daily_limit, tz

    def take(self) -> None:
        """Count one request on the provider's day in the database; RateLimitError when the day is spent."""
        taken = self.store.run(self.provider, lambda c: take_request(c, self.provider, self.daily_limit, self.tz))
        if taken is None:
            today = self.store.run(self.provider, lambda c: quota_today(c, self.provider, self.tz))
            raise quota_spent(self.provider, self.daily_limit, today.day, self.tz, self.where, today.exhausted)

    def reserve(self) -> float:
        """Seconds to wait for the next slot of the provider's shared token bucket (0 when unlimited)."""
        if self.rate is None:
            return 0.0
        rate = self.rate
        return self.store.run(self.provider, lambda c: reserve_slot(c, self.provider, rate, self.burst))

    def exhaust(self) -> None:
        """The provider said today's quota is spent: every process stops asking until its midnight."""
        self.store.run(self.provider, lambda c: exhaust_day(c, self.provider, self.tz))


Limits = LocalLimits | SharedLimits

_STORES: weakref.WeakValueDictionary[str, QuotaStore] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()
_INHERITED: list[psycopg.Connection | None] = []  # connections of a parent process, kept from being closed
_FORK_HOOK: list[bool] = []  # [True] once `_after_fork_in_child` is registered


def limits_for(provider: str, database_url: str | None) -> Limits:
    """Shared (database) limits when a database URL is given, else limits of this process."""
    if not database_url:
        return LocalLimits(provider)
    with _STORES_LOCK:
        if not _FORK_HOOK:  # registered with the first store, not at import
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _FORK_HOOK.append(True)
        store = _STORES.get(database_url)
        if store is None:
            store = QuotaStore(database_url)
            _STORES[database_url] = store
    return SharedLimits(provider, store)


def _after_fork_in_child() -> None:
    for store in list(_STORES.values()):
        store.after_fork()


__all__ = ["DailyQuota", "Limits", "LocalLimits", "QuotaStore", "SharedLimits", "TokenBucket", "limits_for",
           "quota_spent", "zone"]
