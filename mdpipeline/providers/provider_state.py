"""What every HTTP client of one provider name shares: the circuit breaker, the request limits (daily quota
and token bucket, held in a `LimitsStore` such as the database's when a client is given one) and the
concurrency slots.

Two assets of one provider in one process must respect one limit and see one breaker, so clients get
their `ProviderState` from a `ProviderStates` keyed by provider name. By default that is the process's
(`process_states()`, created on first use); a client may be handed its own (isolated tests, workers that
want separate accounting).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import cache

from mdpipeline.providers.breaker import CLOSED, CircuitBreaker
from mdpipeline.providers.limits import Limits, LimitsStore, limits_for
from mdpipeline.providers.policy import HttpPolicy


class ProviderState:
    """The breaker, limits and concurrency slots of one provider name."""

    def __init__(self, provider: str, policy: HttpPolicy, limits_store: LimitsStore | None) -> None:
        self.provider = provider
        self.breaker = CircuitBreaker(provider, policy.breaker_fail_max, policy.breaker_reset_timeout)
        self.limits_store = limits_store
        self.limits: Limits = limits_for(provider, limits_store)
        self.max_concurrent: int | None = None
        self.slots: threading.BoundedSemaphore | None = None
        self.configure(policy, limits_store)

    def configure(self, policy: HttpPolicy, limits_store: LimitsStore | None) -> None:
        """Apply `policy` (the latest client's wins); a client with a limits store moves the limits there,
        one without leaves them where they are (never back from the database into this process)."""
        self.breaker.configure(policy.breaker_fail_max, policy.breaker_reset_timeout)
        if limits_store is not None and limits_store is not self.limits_store:
            self.limits_store = limits_store
            self.limits = limits_for(self.provider, limits_store)
        self.limits.configure(policy.rate_per_second, policy.burst, policy.daily_limit, policy.quota_timezone)
        if policy.max_concurrent != self.max_concurrent:
            self.max_concurrent = policy.max_concurrent
            self.slots = threading.BoundedSemaphore(policy.max_concurrent) if policy.max_concurrent else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the provider's concurrent-request slots (if limited)."""
        slots = self.slots
        if slots is None:
            yield
            return
        with slots:
            yield


class ProviderStates:
    """`ProviderState`s by provider name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, ProviderState] = {}

    def get(self, provider: str, policy: HttpPolicy, limits_store: LimitsStore | None = None) -> ProviderState:
        """The state of `provider`, created or reconfigured with `policy` (and `limits_store`, if any)."""
        with self._lock:
            state = self._states.get(provider)
            if state is None:
                state = self._states[provider] = ProviderState(provider, policy, limits_store)
            else:
                state.configure(policy, limits_store)
            return state

    def breaker_state(self, provider: str) -> str:
        """State of the breaker of `provider` ("closed" when no client was made yet)."""
        with self._lock:
            state = self._states.get(provider)
        return state.breaker.state if state else CLOSED

    def reset(self, provider: str | None = None) -> None:
        """Forget the state of one provider, or of all."""
        with self._lock:
            if provider is None:
                self._states.clear()
            else:
                self._states.pop(provider, None)


@cache
def process_states() -> ProviderStates:
    """The provider states shared by every client of this process that is not given its own."""
    return ProviderStates()


def breaker_state(provider: str) -> str:
    """State of the breaker of `provider` in this process ("closed" when no client was made yet)."""
    return process_states().breaker_state(provider)


def reset_shared_state(provider: str | None = None) -> None:
    """Forget breakers, buckets and quotas (of one provider, or all) of this process: for tests and
    long-lived workers. Quotas held in the database are not touched: they belong to every process."""
    process_states().reset(provider)


__all__ = ["ProviderState", "ProviderStates", "breaker_state", "process_states", "reset_shared_state"]
