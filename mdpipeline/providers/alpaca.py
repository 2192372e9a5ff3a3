"""Alpaca market data v2: daily and 1-minute bars (many symbols per request) and corporate actions.

Endpoints (base URL `https://data.alpaca.markets`, override with `MDP_ALPACA_BASE_URL`):
- `GET /v2/stocks/bars?symbols=A,B&timeframe=1Day|1Min&start&end&adjustment=raw&feed&limit=10000&sort=asc`
  answers `{"bars": {"A": [{t,o,h,l,c,v,n,vw}, ...]}, "next_page_token": ...}`. Bars are sorted by symbol,
  then time, and `limit` counts bars over all symbols, so one symbol may continue on the next page.
- `GET /v1/corporate-actions?symbols&types=forward_split,reverse_split,cash_dividend&start&end&limit&sort`
  answers `{"corporate_actions": {"forward_splits": [...], "reverse_splits": [...], "cash_dividends": [...]},
  "next_page_token": ...}`. Its `start`/`end` filter the *process* date, which for cash dividends is the
  payable date, weeks after the ex-date the pipeline partitions by: the request window is extended by
  `corporate_actions_lag_days` (default 90) so every action whose ex-date is in range is fetched.

Auth: headers `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` from `ALPACA_API_KEY_ID` / `ALPACA_API_SECRET_KEY`,
read only when fetching (replaying stored payloads needs no credentials).

Quirks: daily bars are stamped at midnight New York time (`2024-06-03T04:00:00Z`); minute bars include
pre- and post-market, which transform drops unless the `extended_hours` option is true (the pipeline's
minute bars are regular-session bars, as IBKR's `outsideRth=false` and the synthetic provider give);
HTTP 429 carries `X-RateLimit-Reset` (epoch seconds) rather than Retry-After; 403 means bad keys or a
plan that may not query the feed (e.g. recent SIP data) and is an entitlement error. By default Alpaca
maps a symbol to the company holding it *today* (parameter `asof`); set the `asof` option to change it.

Feed: `iex` by default (every plan may query it); option `feed: sip` for the consolidated tape. Free and
Basic plans get 403 for SIP requests whose `end` is within the last 15 minutes, so on `sip` the request's
`end` is capped at now minus `sip_delay_minutes` (15; 0 for Algo Trader Plus), and a range lying wholly
after that instant is not requested.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from mdpipeline.providers.base import Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import MalformedPayloadError, RateLimitError
from mdpipeline.providers.files import cast_to_standard, parse_utc_timestamp
from mdpipeline.providers.http import HttpResult, Response, json_body
from mdpipeline.providers.kit.actions import split_ratio
from mdpipeline.providers.kit.bars import bar_time, regular_hours
from mdpipeline.providers.kit.pagination import paginate
from mdpipeline.providers.kit.payloads import payload_from, read_json
from mdpipeline.providers.kit.rate_limits import seconds_until_reset
from mdpipeline.providers.rest import RestProvider, credential
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import exchange_timezone

log = logging.getLogger("mdpipeline.providers")

DEFAULT_BASE_URL = "https://data.alpaca.markets"
KEY_ENV, SECRET_ENV = "ALPACA_API_KEY_ID", "ALPACA_API_SECRET_KEY"
BARS_PATH = "/v2/stocks/bars"
ACTIONS_PATH = "/v1/corporate-actions"
TIMEFRAMES = {"bars_1d": "1Day", "bars_1m": "1Min"}
BARS_PAGE_LIMIT = 10_000  # the documented maximum
ACTIONS_PAGE_LIMIT = 1_000
ACTION_TYPES = "forward_split,reverse_split,cash_dividend"
# Basic plan: 200 requests per minute.
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 200 / 60, "burst": 10, "timeout": 30.0}
OPTIONS = frozenset({"feed", "asof", "extended_hours", "symbols_per_request", "max_pages",
                     "corporate_actions_lag_days", "corporate_actions_path", "sip_delay_minutes", "http"})
# Free and Basic plans may not query SIP data of the last 15 minutes (HTTP 403 "subscription does not
# permit querying recent SIP data"); Algo Trader Plus may (option sip_delay_minutes: 0).
SIP_DELAY_MINUTES = 15

_BAR_FIELDS = ("t", "o", "h", "l", "c", "v", "n", "vw")
_BAR_RENAMES = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "n": "trades", "vw": "vwap"}
_SPLIT_FIELDS = ("symbol", "new_rate", "old_rate", "ex_date")
_DIVIDEND_FIELDS = ("symbol", "rate", "ex_date")


def _as_text(fields: Sequence[str]) -> pl.Struct:
    return pl.Struct(dict.fromkeys(fields, pl.String))


_ACTIONS_SCHEMA = {"corporate_actions": pl.Struct({
    "forward_splits": pl.List(_as_text(_SPLIT_FIELDS)),
    "reverse_splits": pl.List(_as_text(_SPLIT_FIELDS)),
    "cash_dividends": pl.List(_as_text(_DIVIDEND_FIELDS)),
})}


class AlpacaProvider(RestProvider):
    """Alpaca market data v2 (stocks): bars_1d, bars_1m and corporate_actions."""

    name = "alpaca"
    default_base_url = DEFAULT_BASE_URL
    default_policy = DEFAULT_POLICY
    options = OPTIONS

    def configure(self, opts: Mapping[str, Any]) -> None:
        """Options: see the module docstring."""
        self.feed = str(opts.get("feed", "iex")).strip().lower()
        self.sip_delay = timedelta(minutes=max(0.0, float(opts.get("sip_delay_minutes", SIP_DELAY_MINUTES))))
        self.asof = None if opts.get("asof") is None else str(opts["asof"])
        self.extended_hours = bool(opts.get("extended_hours", False))
        self.symbols_per_request = max(1, int(opts.get("symbols_per_request", 100)))
        self.max_pages = max(1, int(opts.get("max_pages", 10_000)))
        self.lag_days = max(0, int(opts.get("corporate_actions_lag_days", 90)))
        self.actions_path = str(opts.get("corporate_actions_path", ACTIONS_PATH))

    def client_options(self) -> dict[str, Any]:
        """The key id and secret as headers (read now, when first fetching)."""
        key_id = credential(self.name, KEY_ENV, "API key id")
        secret = credential(self.name, SECRET_ENV, "API secret key")
        return {"secrets": (key_id, secret), "classify": _classify,
                "default_headers": {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret}}

    # -- extract ------------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """Every page of every request for the query's sessions, one payload per page, bytes as sent."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        first, last = sessions[0], sessions[-1]
        payloads: list[RawPayload] = []
        for i in range(0, len(symbols), self.symbols_per_request):
            batch = ",".join(symbols[i:i + self.symbols_per_request])
            if query.dataset == "corporate_actions":
                path, params = self.actions_path, self._actions_params(batch, first, last)
            else:
                path, params = BARS_PATH, self._bars_params(query.dataset, batch, first, last)
                if params["end"] <= params["start"]:
                    log.warning("alpaca: %s %s..%s not requested: feed sip allows data up to %s only", batch,
                                first, last, params["end"])
                    continue
            key = f"{batch}:{first.isoformat()}:{last.isoformat()}"
            payloads += self._pages(path, params, query.dataset, key, first, last)
        return payloads

    def _bars_params(self, dataset: str, symbols: str, first: date, last: date) -> dict[str, Any]:
        """Start at local midnight of the first session, end just before local midnight after the last;
        on the SIP feed, `end` is at most `sip_delay_minutes` (15) ago, which Free/Basic plans may query."""
        tz = ZoneInfo(exchange_timezone(self.calendar_name))
        start = datetime.combine(first, datetime.min.time(), tz)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tz) - timedelta(seconds=1)
        if self.feed == "sip" and self.sip_delay:
            end = min(end, (datetime.now(UTC) - self.sip_delay).replace(microsecond=0))
        return {"symbols": symbols, "timeframe": TIMEFRAMES[dataset], "start": _rfc3339(start), "end": _rfc3339(end),
                "adjustment": "raw", "feed": self.feed, "limit": BARS_PAGE_LIMIT, "sort": "asc", "asof": self.asof}

    def _actions_params(self, symbols: str, first: date, last: date) -> dict[str, Any]:
        end = last + timedelta(days=self.lag_days)
        return {"symbols": symbols, "types": ACTION_TYPES, "start": first.isoformat(), "end": end.isoformat(),
                "limit": ACTIONS_PAGE_LIMIT, "sort": "asc"}

    def _pages(self, path: str, params: dict[str, Any], dataset: str, key: str, first: date,
               last: date) -> list[RawPayload]:
        """Follow `next_page_token` to the end (a token seen before is a pagination loop)."""
        list_key = "bars" if dataset != "corporate_actions" else "corporate_actions"
        pages = paginate(self.name, lambda token: self.http.get_json(path, {**params, "page_token": token}),
                         lambda result: _next_token(result, list_key), max_pages=self.max_pages,
                         where=f"{path} ({key})", cursor_name="next_page_token")
        return [payload_from(self.name, dataset, result, f"{key}:p{page}", first, last)
                for page, result in enumerate(pages)]

    # -- transform ----------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored pages (every value read as text, then cast leniently) into the standard frame."""
        self.check_dataset(dataset)
        frames = [empty_standard_frame(dataset)]
        for payload in payloads:
            if dataset == "corporate_actions":
                frames.append(_actions_frame(payload))
            else:
                frames.append(self._bars_frame(dataset, payload))
        return pl.concat(frames, how="vertical")

    def _bars_frame(self, dataset: str, payload: RawPayload) -> pl.DataFrame:
        symbols = [s for s in str(payload.params.get("symbols", "")).split(",") if s]
        if not symbols:
            raise MalformedPayloadError(f"alpaca: payload {payload.request_key} has no symbols in its params")
        schema = {"bars": pl.Struct({s: pl.List(_as_text(_BAR_FIELDS)) for s in symbols})}
        doc = read_json("alpaca", payload, schema)
        rows = (doc.unnest("bars").unpivot(index=[], variable_name="symbol", value_name="bar")
                .explode("bar").filter(pl.col("bar").is_not_null()).unnest("bar").rename(_BAR_RENAMES))
        typed = rows.select(bar_time(parse_utc_timestamp(pl.col("t")), dataset, exchange_timezone(self.calendar_name)))
        frame = cast_to_standard(rows.drop("t"), dataset, payload.payload_id).with_columns(typed.to_series())
        if dataset == "bars_1m" and not self.extended_hours:
            frame = regular_hours(frame, self.calendar_name)
        return frame


def _actions_frame(payload: RawPayload) -> pl.DataFrame:
    """Forward and reverse splits (ratio = new_rate / old_rate) and cash dividends (amount = rate, USD)."""
    doc = read_json("alpaca", payload, _ACTIONS_SCHEMA).unnest("corporate_actions")

    def rows(column: str) -> pl.DataFrame:
        return doc.select(pl.col(column).explode()).filter(pl.col(column).is_not_null()).unnest(column)

    splits = pl.concat([rows("forward_splits"), rows("reverse_splits")], how="vertical")
    split_frame = splits.select("symbol", "ex_date", action=pl.lit("split"),
                                ratio=split_ratio(pl.col("new_rate"), pl.col("old_rate")))
    dividends = rows("cash_dividends").select(
        "symbol", "ex_date", action=pl.lit("cash_dividend"), amount="rate", currency=pl.lit("USD"))
    both = pl.concat([split_frame, dividends], how="diagonal_relaxed")
    return cast_to_standard(both, "corporate_actions", payload.payload_id)


# -- helpers ---------------------------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _next_token(result: HttpResult, list_key: str) -> str | None:
    """The page cursor of a response, after checking it is the documented object."""
    doc = result.json()
    if not isinstance(doc, dict) or list_key not in doc:
        raise MalformedPayloadError(f"alpaca: GET {result.url}: expected an object with {list_key!r}, "
                                    f"got {str(doc)[:120]!r}")
    token = doc.get("next_page_token")
    if token is not None and not isinstance(token, str):
        raise MalformedPayloadError(f"alpaca: GET {result.url}: next_page_token is not a string: {token!r}")
    return token or None


def _classify(resp: Response) -> None:
    """429 without Retry-After: wait until `X-RateLimit-Reset` (epoch seconds)."""
    if resp.status_code != 429 or resp.headers.get("Retry-After"):
        return
    body = json_body(resp)
    message = body.get("message") if isinstance(body, dict) else None
    raise RateLimitError(f"HTTP 429: {message or 'too many requests'}",
                         retry_after=seconds_until_reset(resp.headers.get("X-RateLimit-Reset")))


SPEC = ProviderSpec(AlpacaProvider, credentials=(KEY_ENV, SECRET_ENV), stream_feed="mdpipeline.stream.feeds:AlpacaFeed",
                    stream_frames="alpaca", gap_repair="mdpipeline.stream.gap_repair:AlpacaTrades")

__all__ = ["SPEC", "AlpacaProvider"]
