"""Finnhub: daily and 1-minute stock candles, splits and dividends.

Requests (base URL `https://finnhub.io/api/v1`, override with `MDP_FINNHUB_BASE_URL`), token from
`FINNHUB_API_KEY` in the `X-Finnhub-Token` header (option `token_in: param` sends `token=` instead; it is
redacted either way), read only when fetching:
- bars_1d: `/stock/candle?resolution=D&from&to` (unix seconds), one request per symbol and calendar year.
  Finnhub documents daily candles as *split-adjusted* (as of the fetch): so extract also fetches
  `/stock/split` from the range start to the fetch date (stored with the candles), and transform
  multiplies each bar's prices by the ratios of the splits after it (up to the candle fetch date) and
  divides its volume by them, giving raw (as-traded) bars like every other provider. Option
  `unadjust_splits: false` keeps Finnhub's values. A daily bar's `t` is read as a UTC date.
- bars_1m: `/stock/candle?resolution=1`, one request per symbol and calendar month (Finnhub returns at
  most one month of intraday data per call); `t` is the bar start (UTC), prices unadjusted. Bars outside
  the regular session are dropped unless `extended_hours: true`.
- corporate_actions: `/stock/split?from&to` (ratio = toFactor / fromFactor) and `/stock/dividend?from&to`
  (`date` is the ex-date; `amount` unadjusted, `currency`).

Candles answer `{"s": "ok", "t": [...], "o", "h", "l", "c", "v"}` or `{"s": "no_data"}` (holidays, ranges
before listing): an empty result, stored like any other response. 403 "You don't have access to this
resource." (candles and dividends are premium) -> EntitlementError; 429 -> RateLimitError, waiting
Retry-After or else until `X-Ratelimit-Reset`. Free tier: 60 calls per minute (the default policy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any

import polars as pl

from mdpipeline.providers.base import ProviderError, Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import BadRequestError, EntitlementError, MalformedPayloadError, RateLimitError
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.http import HttpResult, Response, json_body, parse_json
from mdpipeline.providers.kit.actions import number, split_ratio
from mdpipeline.providers.kit.bars import bar_time, epoch_utc, regular_hours, sessions_by
from mdpipeline.providers.kit.payloads import payload_from
from mdpipeline.providers.kit.rate_limits import seconds_until_reset
from mdpipeline.providers.rest import RestProvider, credential
from mdpipeline.providers.spec import ProviderSpec

NAME = "finnhub"
DEFAULT_BASE_URL = "https://finnhub.io/api/v1"
KEY_ENV = "FINNHUB_API_KEY"
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 1.0, "burst": 1, "timeout": 30.0}
OPTIONS = frozenset({"token_in", "unadjust_splits", "extended_hours", "http"})
_CANDLE_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
_CANDLE_STATUS = ("ok", "no_data")


def classify(resp: Response) -> None:
    """429 without Retry-After waits for X-Ratelimit-Reset; a 200 `{"error": ...}` is a typed error."""
    if resp.status_code == 429 and not resp.headers.get("Retry-After"):
        wait = seconds_until_reset(resp.headers.get("X-Ratelimit-Reset"))
        if wait is not None:
            raise RateLimitError(f"HTTP 429: rate limit, resets in {wait:.0f}s", retry_after=wait)
        return
    body = json_body(resp)
    if resp.ok and isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        raise (EntitlementError if "access" in message.lower() else BadRequestError)(message)


class FinnhubProvider(RestProvider):
    """Finnhub market data (see the module docstring)."""

    name = NAME
    default_base_url = DEFAULT_BASE_URL
    default_policy = DEFAULT_POLICY
    options = OPTIONS

    def configure(self, opts: Mapping[str, Any]) -> None:
        """Options: see the module docstring."""
        self.token_in = str(opts.get("token_in", "header"))
        if self.token_in not in ("header", "param"):
            raise ProviderError(f"{NAME}: token_in must be header or param")
        self.unadjust_splits = bool(opts.get("unadjust_splits", True))
        self.extended_hours = bool(opts.get("extended_hours", False))

    def client_options(self) -> dict[str, Any]:
        """The token in the `X-Finnhub-Token` header, or as `token=` (read now, when first fetching)."""
        token = credential(NAME, KEY_ENV)
        auth = {"default_headers": {"X-Finnhub-Token": token}} if self.token_in == "header" else {
            "default_params": {"token": token}}
        return {"secrets": [token], "classify": classify, **auth}

    # -- extract ---------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """One payload per response (see the module docstring for the requests per dataset)."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        out: list[RawPayload] = []
        for symbol in symbols:
            if query.dataset == "corporate_actions":
                out += [self._list(query.dataset, kind, symbol, sessions[0], sessions[-1], sessions[-1])
                        for kind in ("split", "dividend")]
                continue
            resolution, fmt = ("D", "%Y") if query.dataset == "bars_1d" else ("1", "%Y-%m")
            out += [self._candles(query.dataset, symbol, resolution, chunk, days)
                    for chunk, days in sessions_by(sessions, fmt)]
            if query.dataset == "bars_1d" and self.unadjust_splits:
                today = datetime.now(UTC).date()
                out.append(self._list(query.dataset, "split", symbol, sessions[0], max(today, sessions[-1]),
                                      sessions[-1]))
        return out

    def _candles(self, dataset: str, symbol: str, resolution: str, chunk: str, days: list[date]) -> RawPayload:
        params = {"symbol": symbol, "resolution": resolution, "from": _unix(days[0], dtime.min),
                  "to": _unix(days[-1], dtime.max.replace(microsecond=0))}
        result = self.http.get_json("/stock/candle", params)
        _check_candles(result)
        key = f"candle:{resolution}:{symbol}:{chunk}@{days[-1]}"
        return payload_from(NAME, dataset, result, key, days[0], days[-1])

    def _list(self, dataset: str, kind: str, symbol: str, first: date, to: date, last: date) -> RawPayload:
        result = self.http.get_json(f"/stock/{kind}", {"symbol": symbol, "from": first.isoformat(),
                                                        "to": to.isoformat()})
        if not isinstance(result.json(), list):
            raise MalformedPayloadError(f"{NAME}: GET {result.url}: expected a JSON list, got "
                                        f"{type(result.json()).__name__}")
        return payload_from(NAME, dataset, result, f"{kind}:{symbol}@{last}", first, last)

    # -- transform -------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored bodies into the standard frame of `dataset` (values that do not parse -> null)."""
        self.check_dataset(dataset)
        if dataset == "corporate_actions":
            return pl.concat([empty_standard_frame(dataset), *(_actions_frame(p) for p in payloads)], how="vertical")
        candles = [p for p in payloads if p.request_key.startswith("candle:")]
        frames = [empty_standard_frame(dataset), *(_candle_frame(dataset, p) for p in candles)]
        bars = pl.concat(frames, how="vertical")
        if dataset == "bars_1m":
            return bars if self.extended_hours else regular_hours(bars, self.calendar_name)
        if not self.unadjust_splits:
            return bars
        splits = [_actions_frame(p) for p in payloads if p.request_key.startswith("split:")]
        asof = {p.payload_id: (p.fetched_at or datetime.now(UTC)).astimezone(UTC).date() for p in candles}
        return unadjust_splits(bars, pl.concat([empty_standard_frame("corporate_actions"), *splits]), asof)


def _candle_frame(dataset: str, payload: RawPayload) -> pl.DataFrame:
    """`{"s": "ok", "t": [...], "o": [...], ...}` -> standard rows; `no_data` -> none."""
    doc = _doc(payload)
    if not isinstance(doc, dict) or doc.get("s") != "ok":
        return empty_standard_frame(dataset)
    try:
        frame = pl.DataFrame({k: pl.Series(doc.get(k) or [], dtype=pl.Float64, strict=False)
                              for k in ("t", *_CANDLE_FIELDS)})
    except (pl.exceptions.PolarsError, TypeError) as exc:
        raise MalformedPayloadError(f"{NAME}: payload {payload.request_key}: candle arrays unusable: "
                                    f"{str(exc)[:160]}") from None
    when = bar_time(epoch_utc(pl.col("t").cast(pl.Int64), "s"), dataset, "UTC")  # a daily bar's t is a UTC date
    symbol = str(payload.params.get("symbol", ""))
    std = cast_to_standard(frame.rename(_CANDLE_FIELDS).with_columns(symbol=pl.lit(symbol)), dataset,
                           payload.payload_id)
    return std.with_columns(frame.select(when).to_series())


def _actions_frame(payload: RawPayload) -> pl.DataFrame:
    """/stock/split rows (ratio = toFactor / fromFactor) or /stock/dividend rows (date = ex-date)."""
    rows = _doc(payload)
    if not isinstance(rows, list) or not rows:
        return empty_standard_frame("corporate_actions")
    frame = pl.from_dicts(rows, infer_schema_length=None)
    num = {c: number(pl.col(c)) if c in frame.columns else pl.lit(None, pl.Float64)
           for c in ("toFactor", "fromFactor", "amount")}
    text = {c: pl.col(c).cast(pl.String) if c in frame.columns else pl.lit(None, pl.String)
            for c in ("symbol", "date", "currency")}
    fallback = str(payload.params.get("symbol", ""))
    if payload.request_key.startswith("split:"):
        ratio = split_ratio(num["toFactor"], num["fromFactor"])
        out = frame.select(ex_date=text["date"], action=pl.lit("split"), ratio=ratio,
                           symbol=pl.coalesce(text["symbol"], pl.lit(fallback)))
    else:
        out = frame.select(ex_date=text["date"], action=pl.lit("cash_dividend"), amount=num["amount"],
                           currency=text["currency"], symbol=pl.coalesce(text["symbol"], pl.lit(fallback)))
    return cast_to_standard(out, "corporate_actions", payload.payload_id)


def unadjust_splits(bars: pl.DataFrame, splits: pl.DataFrame, asof: dict[int | None, date]) -> pl.DataFrame:
    """Undo split adjustment: a bar on D fetched on F had its prices divided (volume multiplied) by every
    split ratio with D < ex_date <= F; multiply (divide) them back."""
    splits = splits.filter(pl.col("ratio").is_not_null()).unique(["symbol", "ex_date"], keep="last").select(
        "symbol", "ex_date", "ratio")
    if bars.is_empty() or splits.is_empty():
        return bars
    fetched = pl.DataFrame({"raw_payload_id": list(asof), "__asof": list(asof.values())},
                           schema={"raw_payload_id": pl.Int64, "__asof": pl.Date})
    keyed = bars.join(fetched, on="raw_payload_id", how="left", nulls_equal=True, maintain_order="left")
    keyed = keyed.with_columns(pl.col("__asof").fill_null(pl.col("session_date").max()))
    factors = (keyed.select("symbol", "session_date", "__asof").unique().join(splits, on="symbol")
               .filter((pl.col("ex_date") > pl.col("session_date")) & (pl.col("ex_date") <= pl.col("__asof")))
               .group_by("symbol", "session_date", "__asof").agg(__f=pl.col("ratio").product()))
    out = keyed.join(factors, on=["symbol", "session_date", "__asof"], how="left", maintain_order="left")
    f = pl.col("__f").fill_null(1.0)
    return out.with_columns(*(pl.col(c) * f for c in ("open", "high", "low", "close", "vwap")),
                            volume=pl.col("volume") / f).select(bars.columns)


def _check_candles(result: HttpResult) -> None:
    """`s` is ok or no_data, and an ok answer has equally long arrays."""
    doc = result.json()
    if not isinstance(doc, dict) or doc.get("s") not in _CANDLE_STATUS:
        shown = doc.get("s") if isinstance(doc, dict) else type(doc).__name__
        raise MalformedPayloadError(f"{NAME}: GET {result.url}: candle status {shown!r} is not ok/no_data")
    if doc["s"] == "ok":
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in doc.items() if k in ("t", *_CANDLE_FIELDS)}
        if len(lengths) < 1 + len(_CANDLE_FIELDS) or len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise MalformedPayloadError(f"{NAME}: GET {result.url}: candle arrays missing or of unequal length "
                                        f"({lengths})")


def _doc(payload: RawPayload) -> Any:
    return parse_json(payload.body, f"{NAME}: payload {payload.request_key}")


def _unix(day: date, at: dtime) -> int:
    return int(datetime.combine(day, at, UTC).timestamp())


SPEC = ProviderSpec(FinnhubProvider, credentials=(KEY_ENV,), stream_feed="mdpipeline.stream.feeds:FinnhubFeed",
                    stream_frames="finnhub",
                    unrepairable="finnhub has no historical tick data on the free tier (REST /stock/tick is a premium "
                                 "endpoint): the missed interval cannot be backfilled")

__all__ = ["SPEC", "FinnhubProvider", "classify", "unadjust_splits"]
