"""Polygon.io REST: daily and 1-minute aggregates, splits and dividends, following `next_url` to the end.

Endpoints (base URL `https://api.polygon.io`, override with `MDP_POLYGON_BASE_URL`):
- `GET /v2/aggs/ticker/{T}/range/1/day|minute/{from}/{to}?adjusted=false&sort=asc&limit=50000` answers
  `{"ticker", "status": "OK"|"DELAYED", "resultsCount", "results": [{t,o,h,l,c,v,vw,n}], "next_url"?}`;
  `t` is the bar start in epoch milliseconds (daily bars: midnight New York time). A range without
  trading (holiday, weekend) has `resultsCount: 0` and no `results`: an empty, valid answer.
- `GET /v3/reference/splits?ticker&execution_date.gte&execution_date.lte` -> `results: [{execution_date,
  split_from, split_to, ticker}]`; ratio = split_to / split_from (new shares per old share).
- `GET /v3/reference/dividends?ticker&ex_dividend_date.gte&ex_dividend_date.lte` -> `results:
  [{cash_amount, currency, ex_dividend_date, dividend_type, ticker}]` (every cash type is kept).

Auth: `POLYGON_API_KEY`, sent as `Authorization: Bearer` (so the key is never part of a URL, a
`next_url` or a stored param), read only when fetching. Errors arrive as bodies with `status: "ERROR"`
(e.g. "Unknown API Key", "exceeded the maximum requests per minute") or `"NOT_AUTHORIZED"` (plan does
not cover the data): they become typed errors, never "no data". `next_url` is followed on the
configured base URL (a proxy or test server keeps serving the next pages); a `next_url` seen twice is
a pagination loop and fails the fetch. Minute aggregates include extended hours; transform keeps the
regular session unless the `extended_hours` option is true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import polars as pl

from mdpipeline.providers.base import Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import (
    BadRequestError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.http import HttpResult, Response, json_body, parse_retry_after
from mdpipeline.providers.kit.actions import split_ratio
from mdpipeline.providers.kit.bars import bar_time, epoch_utc, regular_hours
from mdpipeline.providers.kit.pagination import paginate
from mdpipeline.providers.kit.payloads import payload_from, read_json
from mdpipeline.providers.rest import RestProvider, credential
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import exchange_timezone

DEFAULT_BASE_URL = "https://api.polygon.io"
KEY_ENV = "POLYGON_API_KEY"
TIMESPANS = {"bars_1d": "day", "bars_1m": "minute"}
AGGS_LIMIT = 50_000  # the documented maximum
REFERENCE_LIMIT = 1_000
SPLITS_PATH, DIVIDENDS_PATH = "/v3/reference/splits", "/v3/reference/dividends"
# Free plan: 5 requests per minute (paid plans: set `http: {rate_per_second: ...}` in the universe file).
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 5 / 60, "burst": 5, "timeout": 30.0}
OPTIONS = frozenset({"extended_hours", "max_pages", "http"})

_AGG_FIELDS = ("t", "o", "h", "l", "c", "v", "vw", "n")
_AGG_RENAMES = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "vw": "vwap", "n": "trades"}
_SPLIT_FIELDS = ("ticker", "execution_date", "split_from", "split_to")
_DIVIDEND_FIELDS = ("ticker", "ex_dividend_date", "cash_amount", "currency")


def _results_schema(fields: Sequence[str]) -> dict[str, pl.DataType]:
    return {"ticker": pl.String(), "results": pl.List(pl.Struct(dict.fromkeys(fields, pl.String)))}


class PolygonProvider(RestProvider):
    """Polygon.io stocks: bars_1d, bars_1m (aggregates) and corporate_actions (splits, dividends)."""

    name = "polygon"
    default_base_url = DEFAULT_BASE_URL
    default_policy = DEFAULT_POLICY
    options = OPTIONS

    def configure(self, opts: Mapping[str, Any]) -> None:
        """Options: see the module docstring."""
        self.extended_hours = bool(opts.get("extended_hours", False))
        self.max_pages = max(1, int(opts.get("max_pages", 10_000)))

    def client_options(self) -> dict[str, Any]:
        """The key as `Authorization: Bearer` (never in a URL; read now, when first fetching)."""
        key = credential(self.name, KEY_ENV)
        return {"secrets": (key,), "default_headers": {"Authorization": f"Bearer {key}"}, "classify": _classify}

    # -- extract ------------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """Every page of every request for the query's sessions, one payload per page, bytes as sent."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        first, last = sessions[0], sessions[-1]
        span = f"{first.isoformat()}:{last.isoformat()}"
        payloads: list[RawPayload] = []
        for symbol in symbols:
            for kind, path, params in _requests(query.dataset, symbol, first, last):
                payloads += self._pages(path, params, query.dataset, f"{kind}:{symbol}:{span}", first, last)
        return payloads

    def _pages(self, path: str, params: dict[str, Any], dataset: str, key: str, first: date,
               last: date) -> list[RawPayload]:
        """Follow `next_url` to the end (a `next_url` seen before is a pagination loop)."""
        client = self.http
        pages = paginate(self.name, lambda url: client.get_json(path, params) if url is None else
                         client.get_json(self._on_base(url)), _next_url, max_pages=self.max_pages,
                         where=f"{path} ({key})", cursor_name="next_url", shown=client.redact)
        return [payload_from(self.name, dataset, result, f"{key}:p{page}", first, last)
                for page, result in enumerate(pages)]

    def _on_base(self, next_url: str) -> str:
        """`next_url` as is when it is on the base URL's origin, else its path and query on the base URL."""
        parts, base = urlsplit(next_url), urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc) or not parts.scheme:
            return next_url
        return parts.path + (f"?{parts.query}" if parts.query else "")

    # -- transform ----------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored pages (every value read as text, then cast leniently) into the standard frame."""
        self.check_dataset(dataset)
        frames = [empty_standard_frame(dataset)]
        for payload in payloads:
            if dataset != "corporate_actions":
                frames.append(self._bars_frame(dataset, payload))
            elif payload.endpoint.endswith(SPLITS_PATH):
                frames.append(_splits_frame(payload))
            elif payload.endpoint.endswith(DIVIDENDS_PATH):
                frames.append(_dividends_frame(payload))
            else:
                raise MalformedPayloadError(f"polygon: payload {payload.request_key} is from an unknown endpoint "
                                            f"{payload.endpoint!r}")
        return pl.concat(frames, how="vertical")

    def _bars_frame(self, dataset: str, payload: RawPayload) -> pl.DataFrame:
        doc = read_json("polygon", payload, _results_schema(_AGG_FIELDS))
        rows = (doc.select(pl.col("results").explode()).filter(pl.col("results").is_not_null())
                .unnest("results").rename(_AGG_RENAMES))
        symbol = _path_ticker(payload.endpoint) or doc["ticker"][0]
        typed = rows.select(bar_time(epoch_utc(pl.col("t"), "ms"), dataset, exchange_timezone(self.calendar_name)))
        frame = cast_to_standard(rows.drop("t").with_columns(symbol=pl.lit(symbol, pl.String)), dataset,
                                 payload.payload_id).with_columns(typed.to_series())
        if dataset == "bars_1m" and not self.extended_hours:
            frame = regular_hours(frame, self.calendar_name)
        return frame


def _splits_frame(payload: RawPayload) -> pl.DataFrame:
    doc = read_json("polygon", payload, _results_schema(_SPLIT_FIELDS))
    rows = doc.select(pl.col("results").explode()).filter(pl.col("results").is_not_null()).unnest("results")
    frame = rows.select(symbol="ticker", ex_date="execution_date", action=pl.lit("split"),
                        ratio=split_ratio(pl.col("split_to"), pl.col("split_from")))
    return cast_to_standard(frame, "corporate_actions", payload.payload_id)


def _dividends_frame(payload: RawPayload) -> pl.DataFrame:
    doc = read_json("polygon", payload, _results_schema(_DIVIDEND_FIELDS))
    rows = doc.select(pl.col("results").explode()).filter(pl.col("results").is_not_null()).unnest("results")
    frame = rows.select(symbol="ticker", ex_date="ex_dividend_date", action=pl.lit("cash_dividend"),
                        amount="cash_amount", currency=pl.col("currency").str.to_uppercase())
    return cast_to_standard(frame, "corporate_actions", payload.payload_id)


# -- helpers ---------------------------------------------------------------------------------------


def _requests(dataset: str, symbol: str, first: date, last: date) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, path, params) of the request chains answering `dataset` for one symbol."""
    lo, hi = first.isoformat(), last.isoformat()
    if dataset != "corporate_actions":
        timespan = TIMESPANS[dataset]
        path = f"/v2/aggs/ticker/{quote(symbol, safe='')}/range/1/{timespan}/{lo}/{hi}"
        return [(timespan, path, {"adjusted": "false", "sort": "asc", "limit": AGGS_LIMIT})]
    common = {"ticker": symbol, "limit": REFERENCE_LIMIT, "order": "asc"}
    return [
        ("splits", SPLITS_PATH, {**common, "sort": "execution_date", "execution_date.gte": lo,
                                 "execution_date.lte": hi}),
        ("dividends", DIVIDENDS_PATH, {**common, "sort": "ex_dividend_date", "ex_dividend_date.gte": lo,
                                       "ex_dividend_date.lte": hi}),
    ]


def _path_ticker(endpoint: str) -> str | None:
    """The ticker of an aggregates endpoint path (`.../v2/aggs/ticker/{T}/range/...`)."""
    parts = endpoint.split("/")
    if "ticker" in parts and "range" in parts:
        i = parts.index("ticker")
        if i + 1 < len(parts) and parts[i + 2:i + 3] == ["range"]:
            return unquote(parts[i + 1])
    return None


def _next_url(result: HttpResult) -> str | None:
    """The `next_url` of a response, after checking it is the documented object."""
    doc = result.json()
    if not isinstance(doc, dict) or str(doc.get("status", "OK")).upper() not in ("OK", "DELAYED"):
        raise MalformedPayloadError(f"polygon: GET {result.url}: expected an object with status OK, "
                                    f"got {str(doc)[:120]!r}")
    results = doc.get("results")
    if results is not None and not isinstance(results, list):
        raise MalformedPayloadError(f"polygon: GET {result.url}: results is not a list")
    next_url = doc.get("next_url")
    if next_url is not None and not isinstance(next_url, str):
        raise MalformedPayloadError(f"polygon: GET {result.url}: next_url is not a string: {next_url!r}")
    return next_url or None


def _classify(resp: Response) -> None:
    """Polygon's error bodies (`status: ERROR | NOT_AUTHORIZED`) -> typed errors, whatever the HTTP status."""
    body = json_body(resp)
    if not isinstance(body, dict):
        return
    status = str(body.get("status", "")).upper()
    if status not in ("ERROR", "NOT_AUTHORIZED"):
        return
    message = str(body.get("error") or body.get("message") or status)
    code = resp.status_code
    if status == "NOT_AUTHORIZED" or code in (401, 403):
        raise EntitlementError(f"HTTP {code} {status}: {message}")
    if code == 429 or "maximum requests" in message.lower():
        raise RateLimitError(f"HTTP {code}: {message}", retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if code >= 500:
        raise ProviderUnavailableError(f"HTTP {code}: {message}")
    raise BadRequestError(f"HTTP {code}: {message}")


SPEC = ProviderSpec(PolygonProvider, credentials=(KEY_ENV,))

__all__ = ["SPEC", "PolygonProvider"]
