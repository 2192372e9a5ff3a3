"""What every network (REST) provider shares: setup from the universe file, credentials read at fetch
time, the lazily built `HttpClient`, request counters, raw payloads from responses, and the parsing and
filtering helpers their transforms have in common.

A provider subclasses `RestProvider`, sets `name`, `default_base_url` and `default_policy` (and
`options` to refuse unknown universe options), and returns the client's credentials, headers and
`classify` hook from `client_options()`, which runs only when the provider first fetches: replaying
stored payloads needs no credential.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import polars as pl

from mdpipeline.providers.base import DATASETS, ProviderError, Query, RawPayload
from mdpipeline.providers.errors import MalformedPayloadError
from mdpipeline.providers.http import REDACTED, HttpClient, HttpPolicy, HttpResult, breaker_state
from mdpipeline.sessions import calendar, session_bounds, session_dates
from mdpipeline.settings import Settings
from mdpipeline.universe import ProviderSetup

log = logging.getLogger("mdpipeline.providers")


class RestProvider:
    """Base of the network providers: setup, policy, lazily built HTTP client, fetch stats."""

    name: ClassVar[str]
    datasets: tuple[str, ...] = DATASETS
    default_base_url: ClassVar[str | None] = None  # None: the base URL must come from the settings
    default_policy: ClassVar[Mapping[str, Any]] = {}
    options: ClassVar[frozenset[str] | None] = None  # the universe options understood; None: not checked

    def __init__(self, setup: ProviderSetup, settings: Settings, calendar_name: str = "XNYS", *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """`sleep` waits between attempts (injectable so tests can record Retry-After waits)."""
        if self.options is not None:
            unknown = sorted(set(setup.options) - self.options)
            if unknown:
                known = ", ".join(sorted(self.options))
                raise ProviderError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: {known})")
        self.setup = setup
        self.calendar_name = calendar_name
        self.base_url: str | None = settings.base_urls.get(self.name) or self.default_base_url
        self.policy = HttpPolicy.from_options(setup.options, **self.default_policy)
        self.database_url = settings.database_url or None  # holds the request quotas for every process
        self._sleep = sleep
        self._client: HttpClient | None = None
        self.configure(setup.options)

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
                                      database_url=self.database_url, **options)
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


# -- payloads --------------------------------------------------------------------------------------


def payload_from(provider: str, dataset: str, result: HttpResult, request_key: str, first: date,
                 last: date) -> RawPayload:
    """One response as a raw payload: body untouched, query params as sent with secrets removed."""
    return RawPayload(
        provider=provider, dataset=dataset, session_date=first, session_end=last, request_key=request_key,
        endpoint=result.endpoint, params=query_params(result), body=result.body,
        content_type=result.content_type or "application/json", status=result.status,
        fetched_at=result.fetched_at)


def query_params(result: HttpResult) -> dict[str, Any]:
    """The query parameters actually sent (from the redacted URL); redacted values are dropped."""
    sent = dict(parse_qsl(urlsplit(result.url).query, keep_blank_values=True))
    return {k: v for k, v in sent.items() if REDACTED not in v}


def read_json(provider: str, payload: RawPayload, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """A stored JSON body read with `schema`; MalformedPayloadError when it is not that document."""
    try:
        return pl.read_json(io.BytesIO(payload.body), schema=dict(schema))
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise MalformedPayloadError(
            f"{provider}: payload {payload.request_key} is not the documented JSON: {str(exc)[:200]}") from None


def text_column(frame: pl.DataFrame, name: str) -> pl.Expr:
    """Column `name` as text, or nulls when the payload lacks it."""
    return pl.col(name).cast(pl.String) if name in frame.columns else pl.lit(None, pl.String)


# -- sessions --------------------------------------------------------------------------------------


def sessions_by(sessions: Sequence[date], fmt: str) -> list[tuple[str, list[date]]]:
    """Sessions grouped by `day.strftime(fmt)` (e.g. "%Y" or "%Y-%m"), in order."""
    groups: dict[str, list[date]] = {}
    for day in sessions:
        groups.setdefault(day.strftime(fmt), []).append(day)
    return list(groups.items())


def regular_hours(frame: pl.DataFrame, calendar_name: str) -> pl.DataFrame:
    """Minute bars that start inside a regular session (half days included); rows without ts are kept."""
    if frame.is_empty():
        return frame
    tz = str(calendar(calendar_name).tz)
    local_day = pl.col("ts").dt.convert_time_zone(tz).dt.date()
    days = frame.select(local_day.min().alias("lo"), local_day.max().alias("hi")).row(0)
    if days[0] is None:
        return frame
    bounds = session_bounds(days[0], days[1], calendar_name).rename(
        {"session_date": "__day", "open": "__open", "close": "__close"})
    joined = frame.with_columns(local_day.alias("__day")).join(bounds, on="__day", how="left", maintain_order="left")
    inside = pl.col("ts").is_null() | ((pl.col("ts") >= pl.col("__open")) & (pl.col("ts") < pl.col("__close")))
    kept = joined.filter(inside.fill_null(False)).select(frame.columns)
    if kept.height < frame.height:
        log.debug("dropped %d minute bars outside regular sessions", frame.height - kept.height)
    return kept


__all__ = [
    "RestProvider",
    "credential",
    "payload_from",
    "query_params",
    "read_json",
    "regular_hours",
    "sessions_by",
    "text_column",
]
