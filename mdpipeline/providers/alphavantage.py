"""Alpha Vantage: daily and 1-minute bars, splits and dividends, from the one `/query` endpoint.

Requests (base URL `https://www.alphavantage.co`, override with `MDP_ALPHAVANTAGE_BASE_URL`), API key
from `ALPHAVANTAGE_API_KEY` as the `apikey` parameter (read only when fetching, so replaying stored
payloads needs no key):
- bars_1d: `function=TIME_SERIES_DAILY` (option `daily_function: TIME_SERIES_DAILY_ADJUSTED`, a premium
  endpoint), one request per symbol; `outputsize` is `compact` (latest 100 sessions) when the range
  starts within them, else `full` (option `outputsize: auto|compact|full`). The raw (as-traded) OHLCV is
  kept; the adjusted close of DAILY_ADJUSTED is ignored, since the pipeline adjusts itself.
- bars_1m: `function=TIME_SERIES_INTRADAY&interval=1min&month=YYYY-MM&outputsize=full&adjusted=false
  &extended_hours=false`, one request per symbol and calendar month of the range. Timestamps are local
  to the payload's `6. Time Zone` (US/Eastern) and label the bar's *start* (the extended-hours series
  runs 04:00 .. 19:59, and regular hours 09:30 .. 15:59): transform converts them to UTC as they are.
- corporate_actions: `function=SPLITS` (`effective_date`, `split_factor` = new shares per old share)
  and `function=DIVIDENDS` (`ex_dividend_date`, `amount`), one request each per symbol.

Errors arrive as HTTP 200 bodies and become typed errors, never "no data": `Error Message` ->
BadRequestError (EntitlementError for a missing/invalid key), `Note`/`Information` about call frequency
-> RateLimitError (retried after 60s, or 1s for the per-second burst rule), about the daily quota ->
RateLimitError that is not retried (and marks the shared daily quota spent), "is a premium endpoint /
feature" or the demo key -> EntitlementError with a hint (`outputsize=full` on TIME_SERIES_DAILY is a
premium feature: a free key only gets the latest 100 sessions, `compact`).
Free tier: 25 requests per day and 5 per minute, the default HttpPolicy (`http:` option overrides).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from mdpipeline.providers.base import ProviderError, Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import BadRequestError, EntitlementError, MalformedPayloadError, RateLimitError
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.http import HttpResult, Response, json_body, parse_json
from mdpipeline.providers.kit.bars import sessions_by
from mdpipeline.providers.kit.payloads import payload_from
from mdpipeline.providers.kit.payloads import text_column as _col
from mdpipeline.providers.rest import RestProvider, credential
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import session_dates

NAME = "alphavantage"
DEFAULT_BASE_URL = "https://www.alphavantage.co"
KEY_ENV = "ALPHAVANTAGE_API_KEY"
PATH = "/query"
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 5 / 60, "burst": 1, "daily_limit": 25, "timeout": 30.0}
OPTIONS = frozenset({"daily_function", "outputsize", "currency", "http"})
COMPACT_SESSIONS = 100  # what outputsize=compact returns
PREMIUM_URL = "https://www.alphavantage.co/premium/"
_PREMIUM = re.compile(r"\bis a premium (endpoint|feature)")  # not "unlock all premium endpoints"
_DAILY_FUNCTIONS = ("TIME_SERIES_DAILY", "TIME_SERIES_DAILY_ADJUSTED")
_PRICE_FIELDS = {"1. open": "open", "2. high": "high", "3. low": "low", "4. close": "close"}
_DATA_KEYS = ("Meta Data", "data")  # a body holding data is never an error, whatever else it says


def classify(resp: Response) -> None:
    """HTTP 200 error bodies -> typed errors (see the module docstring).

    The order matters, because the texts overlap: the daily-quota text invites to "the premium plans",
    the premium-feature text names `TIME_SERIES_DAILY`, and the burst text mentions "25 requests per
    day" and the "per-minute rate limit". So the specific wording is tested first: "is a premium
    endpoint/feature" (an entitlement), then the per-second burst rule, then the per-minute frequency,
    then the daily quota.
    """
    body = json_body(resp)
    if not isinstance(body, dict) or any(k in body for k in _DATA_KEYS):
        return
    if "Error Message" in body:
        message = str(body["Error Message"])
        if "apikey" in message.lower():
            raise EntitlementError(f"Error Message: {message}", hint=f"set {KEY_ENV} to a valid key")
        raise BadRequestError(f"Error Message: {message}")
    text = body.get("Note") or body.get("Information")
    if text is None:
        return
    message, low = f"{'Note' if 'Note' in body else 'Information'}: {text}", str(text).lower()
    if _PREMIUM.search(low):
        raise EntitlementError(message, hint=_premium_hint(low))
    if "per second" in low or "spreading out" in low or "burst" in low:
        raise RateLimitError(message, retry_after=1.0)
    if "per minute" in low or "call frequency" in low:
        raise RateLimitError(message, retry_after=60.0)
    if "per day" in low or "daily rate limit" in low:
        raise RateLimitError(message, retryable=False, daily=True)
    if "premium" in low or "demo" in low or "api key" in low:
        raise EntitlementError(message, hint=f"a free key from {DEFAULT_BASE_URL}/support/#api-key in {KEY_ENV}"
                               if "demo" in low else f"a premium plan: {PREMIUM_URL}")
    raise RateLimitError(message)


def _premium_hint(low: str) -> str:
    """What to do about a premium-only request, naming the parameter when the answer names it."""
    if "outputsize" in low:
        return (f"outputsize=full is premium ({PREMIUM_URL}); a free key gets outputsize=compact, the latest "
                f"{COMPACT_SESSIONS} sessions: fetch ranges within them, or set the provider option "
                "outputsize: compact to accept that older sessions stay empty")
    return f"this endpoint needs a premium plan ({PREMIUM_URL}); e.g. use daily_function: TIME_SERIES_DAILY"


class AlphaVantageProvider(RestProvider):
    """Alpha Vantage market data (see the module docstring)."""

    name = NAME
    default_base_url = DEFAULT_BASE_URL
    default_policy = DEFAULT_POLICY
    options = OPTIONS

    def configure(self, opts: Mapping[str, Any]) -> None:
        """Options: see the module docstring."""
        self.daily_function = str(opts.get("daily_function", "TIME_SERIES_DAILY"))
        if self.daily_function not in _DAILY_FUNCTIONS:
            raise ProviderError(f"{NAME}: daily_function must be one of {_DAILY_FUNCTIONS}")
        self.outputsize = str(opts.get("outputsize", "auto"))
        if self.outputsize not in ("auto", "compact", "full"):
            raise ProviderError(f"{NAME}: outputsize must be auto, compact or full")
        self.currency = opts.get("currency")  # dividends carry none; e.g. USD

    def client_options(self) -> dict[str, Any]:
        """The API key as the `apikey` parameter (read now, when first fetching)."""
        key = credential(NAME, KEY_ENV)
        return {"secrets": [key], "default_params": {"apikey": key, "datatype": "json"}, "classify": classify}

    # -- extract ---------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """One payload per response: per symbol (daily, splits, dividends) or per symbol and month (1m)."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        if query.dataset == "bars_1d":
            size = self._outputsize(sessions[0])
            return [self._fetch(query.dataset, {"function": self.daily_function, "symbol": s, "outputsize": size},
                                "Time Series (Daily)", sessions[0], sessions[-1]) for s in symbols]
        if query.dataset == "bars_1m":
            months = sessions_by(sessions, "%Y-%m")
            return [self._fetch(query.dataset, {
                "function": "TIME_SERIES_INTRADAY", "symbol": s, "interval": "1min", "month": month,
                "outputsize": "full", "adjusted": "false", "extended_hours": "false",
            }, "Time Series (1min)", days[0], days[-1]) for s in symbols for month, days in months]
        return [self._fetch(query.dataset, {"function": function, "symbol": s}, "data", sessions[0], sessions[-1])
                for s in symbols for function in ("SPLITS", "DIVIDENDS")]

    def _fetch(self, dataset: str, params: dict[str, str], data_key: str, first: date, last: date) -> RawPayload:
        result = self.http.get_json(PATH, params)
        _check_shape(result, data_key)
        key = ":".join([params["function"], params["symbol"],
                        *(params[p] for p in ("interval", "month", "outputsize") if p in params)])
        return payload_from(NAME, dataset, result, f"{key}@{last.isoformat()}", first, last)

    def _outputsize(self, first: date) -> str:
        """compact when the latest 100 sessions reach back to `first`, else full."""
        if self.outputsize != "auto":
            return self.outputsize
        today = datetime.now(UTC).date()
        recent = session_dates(today - timedelta(days=200), today, self.calendar_name)
        return "compact" if len(recent) >= COMPACT_SESSIONS and first >= recent[-COMPACT_SESSIONS] else "full"

    # -- transform -------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored bodies into the standard frame of `dataset` (values that do not parse -> null)."""
        self.check_dataset(dataset)
        parse = {"bars_1d": _daily_frame, "bars_1m": _minute_frame, "corporate_actions": self._actions_frame}[dataset]
        frames = [empty_standard_frame(dataset), *(parse(p) for p in payloads)]
        return pl.concat(frames, how="vertical")

    def _actions_frame(self, payload: RawPayload) -> pl.DataFrame:
        doc = _doc(payload)
        rows = doc.get("data") or []
        if not rows:
            return empty_standard_frame("corporate_actions")
        frame = pl.from_dicts(rows, infer_schema_length=None)
        if payload.params.get("function") == "SPLITS":
            frame = frame.select(ex_date=_col(frame, "effective_date"), ratio=_col(frame, "split_factor"),
                                 action=pl.lit("split"))
        else:
            frame = frame.select(ex_date=_col(frame, "ex_dividend_date"), amount=_col(frame, "amount"),
                                 action=pl.lit("cash_dividend"), currency=pl.lit(self.currency, pl.String))
        symbol = str(doc.get("symbol") or payload.params.get("symbol", ""))
        return cast_to_standard(frame.with_columns(symbol=pl.lit(symbol)), "corporate_actions", payload.payload_id)


def _daily_frame(payload: RawPayload) -> pl.DataFrame:
    """`Time Series (Daily)`: {date: {"1. open": ..., "5. volume" (or "6. volume" when adjusted)}}."""
    series = _doc(payload).get("Time Series (Daily)") or {}
    if not series:
        return empty_standard_frame("bars_1d")
    values = pl.from_dicts(list(series.values()), infer_schema_length=None)
    volume = "6. volume" if "6. volume" in values.columns else "5. volume"
    frame = values.select(**{v: _col(values, k) for k, v in _PRICE_FIELDS.items()}, volume=_col(values, volume))
    frame = frame.with_columns(session_date=pl.Series(list(series), dtype=pl.String),
                               symbol=pl.lit(str(payload.params.get("symbol", ""))))
    return cast_to_standard(frame, "bars_1d", payload.payload_id)


def _minute_frame(payload: RawPayload) -> pl.DataFrame:
    """`Time Series (1min)`: {"YYYY-MM-DD HH:MM:SS" (bar start, payload time zone): {...}} -> UTC bars."""
    doc = _doc(payload)
    series = doc.get("Time Series (1min)") or {}
    if not series:
        return empty_standard_frame("bars_1m")
    zone = str((doc.get("Meta Data") or {}).get("6. Time Zone") or "US/Eastern")
    values = pl.from_dicts(list(series.values()), infer_schema_length=None)
    frame = values.select(**{v: _col(values, k) for k, v in _PRICE_FIELDS.items()}, volume=_col(values, "5. volume"))
    frame = frame.with_columns(symbol=pl.lit(str(payload.params.get("symbol", ""))))
    local = pl.Series(list(series), dtype=pl.String).str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us",
                                                                      strict=False)
    try:
        ts = local.dt.replace_time_zone(zone, ambiguous="null", non_existent="null").dt.convert_time_zone("UTC")
    except pl.exceptions.PolarsError:
        raise MalformedPayloadError(f"{NAME}: payload {payload.request_key}: unknown time zone {zone!r}") from None
    return cast_to_standard(frame, "bars_1m", payload.payload_id).with_columns(ts=ts)


def _doc(payload: RawPayload) -> dict[str, Any]:
    """The JSON object of a stored payload (a payload that is not one is a malformed payload)."""
    doc = parse_json(payload.body, f"{NAME}: payload {payload.request_key}")
    if not isinstance(doc, dict):
        raise MalformedPayloadError(f"{NAME}: payload {payload.request_key} is not a JSON object")
    return doc


def _check_shape(result: HttpResult, data_key: str) -> None:
    """A 200 body that is neither an error (classify) nor the documented data is malformed."""
    doc = result.json()
    if isinstance(doc, dict) and isinstance(doc.get(data_key), dict | list):
        return
    keys = ", ".join(sorted(doc)) if isinstance(doc, dict) else type(doc).__name__
    raise MalformedPayloadError(f"{NAME}: GET {result.url}: no {data_key!r} in the response (got: {keys or 'empty'})")


SPEC = ProviderSpec(AlphaVantageProvider, credentials=(KEY_ENV,))

__all__ = ["SPEC", "AlphaVantageProvider", "classify"]
