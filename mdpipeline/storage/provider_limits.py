"""The request limits every process shares: a provider's daily quota and token bucket held in the database
(`ops.provider_quota` / `ops.provider_rate`, SQL in `mdpipeline.storage.provider_quota`).

`quota_store(database_url)` is the `LimitsStore` (`mdpipeline.providers.limits`) that the layer holding
the database URL hands to the providers (the Dagster `ProvidersResource`, via `build_provider(...,
limits_store=...)`, or `HttpClient(..., limits_store=...)` directly); its `limits(provider)` are the
`SharedLimits` the HTTP client consults before every attempt. A free Alpha Vantage key's 25 requests a
day are then 25 however many runs, workers or backfills ask, and its 5 a minute are spaced across all
of them. The providers layer never imports this module: without a store its limits stay in the process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import psycopg

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import QuotaStoreError
from mdpipeline.providers.limits import quota_spent, zone
from mdpipeline.storage.database import connect
from mdpipeline.storage.provider_quota import exhaust_day, quota_today, reserve_slot, take_request

T = TypeVar("T")


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

    def limits(self, provider: str) -> SharedLimits:
        """The limits of `provider` held in this store (a `LimitsStore`)."""
        return SharedLimits(provider, self)

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


_STORES: weakref.WeakValueDictionary[str, QuotaStore] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()
_INHERITED: list[psycopg.Connection | None] = []  # connections of a parent process, kept from being closed
_FORK_HOOK: list[bool] = []  # [True] once `_after_fork_in_child` is registered


def quota_store(database_url: str) -> QuotaStore:
    """The store of the shared limits in the database at `database_url`: one per URL and process while in
    use (one connection however many providers and clients)."""
    if not database_url:
        raise ValueError("quota_store needs a database URL (without one, limits stay in the process)")
    with _STORES_LOCK:
        if not _FORK_HOOK:  # registered with the first store, not at import
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _FORK_HOOK.append(True)
        store = _STORES.get(database_url)
        if store is None:
            store = QuotaStore(database_url)
            _STORES[database_url] = store
    return store


def _after_fork_in_child() -> None:
    for store in list(_STORES.values()):
        store.after_fork()


__all__ = ["QuotaStore", "SharedLimits", "quota_store"]
