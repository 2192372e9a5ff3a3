"""IEX Cloud's chart API, for IEX-compatible endpoints: the hosted service was retired on 2024-08-31.

There is no default base URL: set `MDP_IEXCLOUD_BASE_URL` to a server speaking the IEX Cloud API
(including its version prefix, e.g. `https://iex.example.com/stable`), or switch the provider off in the
universe file (`enabled: false`). Token from `IEX_CLOUD_TOKEN`, sent as the `token` parameter and
redacted everywhere; both are read only when fetching, so replaying stored payloads needs neither.

Requests, one per symbol and session (holidays are never asked for):
- bars_1d: `/stock/{symbol}/chart/date/{YYYYMMDD}?chartByDay=true` -> `[{date, uOpen, uHigh, uLow, uClose,
  uVolume, open, ...}]`. The unadjusted `u*` fields are used; a compatible server without them is read
  from `open`/`high`/`low`/`close`/`volume` (which IEX Cloud split-adjusts).
- bars_1m: `/stock/{symbol}/chart/date/{YYYYMMDD}` -> `[{date, minute: "09:30", label, open, high, low,
  close, average, volume, numberOfTrades, marketOpen, marketHigh, marketLow, marketClose, marketAverage,
  marketVolume, marketNumberOfTrades, ...}]`; `minute` is the bar *start* in New York time (09:30 covers
  09:30-09:31). The plain fields count trades on the IEX exchange only (about 1% of the volume); the
  consolidated `market*` fields are used, and the IEX fields only for a row whose `market*` fields are
  all null or absent. Minutes without trades have null prices: the rows are kept, and validation
  quarantines them with a reason. `(market)Average` becomes vwap, `(market)NumberOfTrades` trades.
- corporate_actions (one request each per symbol, the smallest IEX range reaching back to the start):
  `/stock/{symbol}/splits/{range}` (ratio = toFactor / fromFactor: IEX's own `ratio` is the inverse)
  and `/stock/{symbol}/dividends/{range}` (`exDate`, `amount`, `currency`; a non-cash `flag` is kept as
  action `dividend:<flag>`, which validation quarantines).

Errors: 402 (message quota or plan) and 401/403 -> EntitlementError, 404 (unknown symbol) and other 4xx
-> BadRequestError, 429 -> RateLimitError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, unquote

import polars as pl

from mdpipeline.providers.base import ProviderError, Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import EntitlementError, MalformedPayloadError
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.http import HttpResult, Response, parse_json
from mdpipeline.providers.kit.actions import number, split_ratio
from mdpipeline.providers.kit.payloads import payload_from
from mdpipeline.providers.kit.payloads import text_column as _text
from mdpipeline.providers.rest import RestProvider, credential
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import exchange_timezone
from mdpipeline.settings import base_url_variable

log = logging.getLogger("mdpipeline.providers")

NAME = "iexcloud"
TOKEN_ENV = "IEX_CLOUD_TOKEN"
BASE_URL_ENV = base_url_variable(NAME)
RETIRED = ("the hosted IEX Cloud service (cloud.iexapis.com) was retired on 2024-08-31; set "
           f"{BASE_URL_ENV} to an IEX-compatible endpoint, or set enabled: false for iexcloud in the universe file")
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 10.0, "burst": 10, "timeout": 30.0}
# IEX ranges for splits/dividends, with how many days back each reaches.
RANGES = (("1m", 28), ("3m", 89), ("6m", 180), ("1y", 365), ("2y", 730), ("5y", 1826))
_PRICES = ("open", "high", "low", "close", "volume")


def classify(resp: Response) -> None:
    """402 Payment Required (message quota exhausted or endpoint not in the plan) is an entitlement error."""
    if resp.status_code == 402:
        text = " ".join(resp.text.split())[:200] or "Payment Required"
        raise EntitlementError(f"HTTP 402: {text}")


class IexCloudProvider(RestProvider):
    """IEX Cloud chart API on an IEX-compatible server (see the module docstring)."""

    name = NAME
    default_policy = DEFAULT_POLICY  # no default base URL: the hosted service is retired

    def client_options(self) -> dict[str, Any]:
        """The token as the `token` parameter; both it and the base URL are needed only to fetch."""
        if not self.base_url:
            raise ProviderError(f"{NAME}: {RETIRED}")
        token = credential(NAME, TOKEN_ENV, "API token")
        return {"secrets": [token], "default_params": {"token": token}, "classify": classify}

    # -- extract ---------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """One payload per response: per symbol and session (bars), per symbol and kind (actions)."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        if query.dataset == "corporate_actions":
            span = _range_for(sessions[0])
            return [self._get(query.dataset, f"/stock/{quote(s, safe='')}/{kind}/{span}", {},
                              f"{kind}:{s}:{span}@{sessions[-1]}", sessions[0], sessions[-1])
                    for s in symbols for kind in ("splits", "dividends")]
        by_day = {"chartByDay": "true"} if query.dataset == "bars_1d" else {}
        suffix = ":byday" if by_day else ""
        return [self._get(query.dataset, f"/stock/{quote(s, safe='')}/chart/date/{d:%Y%m%d}", by_day,
                          f"chart:{s}:{d:%Y%m%d}{suffix}", d, d) for s in symbols for d in sessions]

    def _get(self, dataset: str, path: str, params: dict[str, str], key: str, first: date, last: date) -> RawPayload:
        result = self.http.get_json(path, params)
        _check_list(result)
        return payload_from(NAME, dataset, result, key, first, last)

    # -- transform -------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored bodies into the standard frame of `dataset` (values that do not parse -> null)."""
        self.check_dataset(dataset)
        parse = {"bars_1d": _daily_frame, "bars_1m": self._minute_frame, "corporate_actions": _actions_frame}[dataset]
        return pl.concat([empty_standard_frame(dataset), *(parse(p) for p in payloads)], how="vertical")

    def _minute_frame(self, payload: RawPayload) -> pl.DataFrame:
        """Minute rows: `date` + `minute` (New York bar start) -> UTC `ts`."""
        rows = _rows(payload)
        if rows is None:
            return empty_standard_frame("bars_1m")
        frame = rows.select(**_consolidated(rows), symbol=pl.lit(_symbol(payload)))
        local = pl.concat_str(_text(rows, "date").str.replace_all("-", ""), pl.lit(" "), _text(rows, "minute"))
        zone = exchange_timezone(self.calendar_name)
        ts = rows.select(local.str.to_datetime("%Y%m%d %H:%M", time_unit="us", strict=False)
                         .dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
                         .dt.convert_time_zone("UTC").alias("ts")).to_series()
        return cast_to_standard(frame, "bars_1m", payload.payload_id).with_columns(ts)


def _consolidated(rows: pl.DataFrame) -> dict[str, pl.Expr]:
    """Minute fields from the consolidated `market*` columns; a row whose market fields are all null (or a
    server without them) is read from the IEX-exchange-only fields instead, never a mix of both."""
    fields = {**{c: c for c in _PRICES}, "vwap": "average", "trades": "numberOfTrades"}
    market = {out: _text(rows, "market" + name[0].upper() + name[1:]) for out, name in fields.items()}
    has_market = pl.any_horizontal(e.is_not_null() for e in market.values())
    return {out: pl.when(has_market).then(market[out]).otherwise(_text(rows, name)) for out, name in fields.items()}


def _daily_frame(payload: RawPayload) -> pl.DataFrame:
    """chartByDay rows: unadjusted `u*` prices where present, else the plain fields."""
    rows = _rows(payload)
    if rows is None:
        return empty_standard_frame("bars_1d")
    unadjusted = {c: pl.coalesce(_text(rows, "u" + c[0].upper() + c[1:]), _text(rows, c)) for c in _PRICES}
    frame = rows.select(**unadjusted, session_date=_text(rows, "date"), symbol=pl.lit(_symbol(payload)))
    return cast_to_standard(frame, "bars_1d", payload.payload_id)


def _actions_frame(payload: RawPayload) -> pl.DataFrame:
    """Splits (ratio = toFactor / fromFactor, else 1 / IEX ratio) or dividends (flag Cash -> cash_dividend)."""
    rows = _rows(payload)
    if rows is None:
        return empty_standard_frame("corporate_actions")
    symbol = pl.coalesce(_text(rows, "symbol"), pl.lit(_symbol(payload)))
    if "/splits/" in payload.endpoint:
        iex = number(_text(rows, "ratio"))
        ratio = split_ratio(_text(rows, "toFactor"), _text(rows, "fromFactor")).when(iex > 0).then(1.0 / iex)
        frame = rows.select(symbol=symbol, ex_date=_text(rows, "exDate"), action=pl.lit("split"), ratio=ratio)
    else:
        flag = _text(rows, "flag")
        action = pl.when(flag.is_null() | (flag.str.to_lowercase() == "cash")).then(pl.lit("cash_dividend")).otherwise(
            pl.lit("dividend:") + flag)
        frame = rows.select(symbol=symbol, ex_date=_text(rows, "exDate"), action=action,
                            amount=_text(rows, "amount"), currency=_text(rows, "currency"))
    return cast_to_standard(frame, "corporate_actions", payload.payload_id)


def _rows(payload: RawPayload) -> pl.DataFrame | None:
    """The JSON list of a stored payload as a frame (None when empty)."""
    doc = parse_json(payload.body, f"{NAME}: payload {payload.request_key}")
    if not isinstance(doc, list):
        raise MalformedPayloadError(f"{NAME}: payload {payload.request_key} is not a JSON list")
    if not doc:
        return None
    try:
        return pl.from_dicts(doc, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise MalformedPayloadError(f"{NAME}: payload {payload.request_key}: rows unusable: {str(exc)[:160]}") from None


def _symbol(payload: RawPayload) -> str:
    """The symbol of the request: the path segment after `stock`."""
    parts = payload.endpoint.split("/")
    return unquote(parts[parts.index("stock") + 1]) if "stock" in parts[:-1] else ""


def _range_for(first: date) -> str:
    """The smallest IEX range that reaches back to `first` (5y at most)."""
    days = (datetime.now(UTC).date() - first).days
    for span, reach in RANGES:
        if days <= reach:
            return span
    log.warning("%s: corporate actions before the last 5 years are not available (asked from %s)", NAME, first)
    return RANGES[-1][0]


def _check_list(result: HttpResult) -> None:
    doc = result.json()
    if not isinstance(doc, list):
        raise MalformedPayloadError(f"{NAME}: GET {result.url}: expected a JSON list, got {type(doc).__name__}")


SPEC = ProviderSpec(IexCloudProvider, credentials=(TOKEN_ENV,))

__all__ = ["SPEC", "IexCloudProvider", "classify"]
