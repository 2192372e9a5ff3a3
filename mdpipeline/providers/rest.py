"""What every network (REST) provider shares: setup from the universe file (options checked against the
adapter's whitelist), credentials read at fetch time, the lazily built `HttpClient`, and request counters.

A provider subclasses `RestProvider`, sets `name`, `datasets`, `default_base_url`, `default_policy` and
`options` (the universe options it understands; `http` is the policy override every one accepts), reads
its own options in `configure()`, and returns the client's credentials, headers and `classify` hook
from `client_options()`, which runs only when the provider first fetches: replaying stored payloads
needs no credential. Building payloads, pagination, bar times, split ratios and reset headers come
from `mdpipeline.providers.kit`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, ClassVar

from mdpipeline.providers.base import DATASETS, ProviderError, Query
from mdpipeline.providers.http import HttpClient, HttpPolicy
from mdpipeline.providers.kit.options import check_options
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.providers.provider_state import breaker_state
from mdpipeline.sessions import session_dates
from mdpipeline.settings import Settings
from mdpipeline.universe import ProviderSetup

log = logging.getLogger("mdpipeline.providers")


class RestProvider:
    """Base of the network providers: setup, policy, lazily built HTTP client, fetch stats."""

    name: ClassVar[str]
    datasets: tuple[str, ...] = DATASETS
    default_base_url: ClassVar[str | None] = None  # None: the base URL must come from the settings
    default_policy: ClassVar[Mapping[str, Any]] = {}
    options: ClassVar[frozenset[str]] = frozenset({"http"})  # the universe options understood

    def __init__(self, setup: ProviderSetup, settings: Settings, calendar_name: str = "XNYS", *,
                 sleep: Callable[[float], None] = time.sleep, limits_store: LimitsStore | None = None) -> None:
        """`sleep` waits between attempts (injectable so tests can record Retry-After waits);
        `limits_store` holds the request limits for every process (None: counted in this process)."""
        check_options(self.name, setup.options, self.options)
        self.setup = setup
        self.calendar_name = calendar_name
        self.base_url: str | None = settings.base_urls.get(self.name) or self.default_base_url
        self.policy = HttpPolicy.from_options(setup.options, **self.default_policy)
        self.limits_store = limits_store
        self._sleep = sleep
        self._client: HttpClient | None = None
        self.configure(setup.options)

    @classmethod
    def from_settings(cls, setup: ProviderSetup, settings: Settings, calendar_name: str, *,
                      limits_store: LimitsStore | None = None) -> RestProvider:
        """The provider for `setup` (how the registry builds it)."""
        return cls(setup, settings, calendar_name=calendar_name, limits_store=limits_store)

    def configure(self, options: Mapping[str, Any]) -> None:
        """Read the provider's own universe options (after the common ones); ProviderError when invalid."""

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of the `HttpClient` (secrets, default params/headers, classify, verify)."""
        return {}

    @property
    def http(self) -> HttpClient:
        """The HTTP client, built on first use (credentials are read only to fetch)."""
        if self._client is None:
            options = self.client_options()
            self._client = HttpClient(self.name, self.base_url or "", self.policy, sleep=self._sleep,
                                      limits_store=self.limits_store, **options)
        return self._client

    def fetch_stats(self) -> dict[str, object]:
        """Request counters of this provider instance and the (shared) breaker state, for asset metadata."""
        stats = self._client.stats.as_dict() if self._client else {}
        return {**stats, "breaker_state": breaker_state(self.name)}

    def sessions_and_symbols(self, query: Query) -> tuple[list[date], list[str]]:
        """The sessions of `query` and its symbols (the universe's when it names none); dataset checked."""
        self.check_dataset(query.dataset)
        sessions = session_dates(query.start, query.end, self.calendar_name)
        return sessions, list(query.symbols or self.setup.symbols)

    def check_dataset(self, dataset: str) -> None:
        """ProviderError unless this provider serves `dataset`."""
        if dataset not in self.datasets:
            raise ProviderError(f"{self.name} provider has no dataset {dataset!r} (known: {', '.join(self.datasets)})")


def credential(provider: str, variable: str, what: str = "API key") -> str:
    """The credential in environment variable `variable`; a ProviderError naming it when unset or blank."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ProviderError(f"{provider}: no {what}: set {variable}")
    return value


__all__ = ["RestProvider", "credential"]
