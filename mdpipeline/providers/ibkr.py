"""Interactive Brokers Client Portal Web API: daily and 1-minute bars through a logged-in gateway.

Endpoints (base URL `https://localhost:5000/v1/api`, the Client Portal gateway; override with
`MDP_IBKR_BASE_URL`). The gateway holds the brokerage session, so no credential is sent from here.
- `GET /iserver/secdef/search?symbol=AAPL&secType=STK` resolves a symbol to a contract id (conid): the
  entry whose `symbol` matches, that has an `STK` section, and whose primary exchange (`description`)
  is a US listing exchange (option `exchanges`). Resolutions are cached per provider instance; the
  `conids` option pins them (`{AAPL: 265598}`) and skips the search.
- `GET /iserver/marketdata/history?conid&period&bar=1d|1min&outsideRth=false&startTime=YYYYMMDD-HH:MM:SS`
  answers `{"symbol", "priceFactor", "high": "17510/472117.45/0", "volumeFactor", "data": [{o,c,h,l,v,t}]}`
  with `t` the bar start in epoch milliseconds. `startTime` (UTC) is where the period ends: the period
  extends backwards from it. At most 1000 data points per request and 5 concurrent requests (HTTP 429
  beyond): daily ranges are split so that one request spans at most `max_period_days` (1000) calendar
  days, minute bars are requested one session at a time (390 points), and requests run on at most
  `http.max_concurrent` (5) threads.

Quirks (documented in the API reference): the summary `high`/`low` strings are scaled by `priceFactor`
(17510 = 175.10 x 100) while the bars in `data` carry plain prices; transform checks each payload (the
summary high against the bars' highest high) and divides the bars by `priceFactor` only when they turn
out to be scaled too. Volumes of US stocks are reported in lots of 100 shares ("reported volume = actual
volume / 100"); transform multiplies by the `volume_multiplier` option (default 100; `volumeFactor` is
documented as internal, for chart histograms, and is not applied). The gateway's TLS certificate is
self-signed: set the `verify_tls` option to its certificate file (or false for a loopback gateway).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import polars as pl

from mdpipeline.providers.base import ProviderError, Query, RawPayload, empty_standard_frame
from mdpipeline.providers.errors import BadRequestError, EntitlementError, MalformedPayloadError
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.http import HttpResult, Response, json_body
from mdpipeline.providers.kit.bars import bar_time, epoch_utc
from mdpipeline.providers.kit.payloads import payload_from, read_json
from mdpipeline.providers.rest import RestProvider
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import exchange_timezone, session_bounds

DEFAULT_BASE_URL = "https://localhost:5000/v1/api"
SEARCH_PATH = "/iserver/secdef/search"
HISTORY_PATH = "/iserver/marketdata/history"
BARS = {"bars_1d": "1d", "bars_1m": "1min"}
US_EXCHANGES = ("NASDAQ", "NYSE", "ARCA", "AMEX", "BATS", "IEX")
# Documented pacing: 10 requests per second per session; history: 5 concurrent requests.
DEFAULT_POLICY: dict[str, Any] = {"rate_per_second": 10.0, "burst": 5, "max_concurrent": 5, "timeout": 60.0}
OPTIONS = frozenset({"conids", "exchanges", "volume_multiplier", "max_period_days", "verify_tls", "http"})
# Error texts that mean the account may not see this data ("No market data permissions for NYSE STK").
_NOT_ENTITLED = ("permission", "not subscribed", "subscription")
_PERMISSIONS_HINT = ("the IBKR account lacks the market-data subscription for this exchange: add it in Client "
                     "Portal (Settings > Market Data Subscriptions), or switch the symbol to another provider")
_SCALE_TOLERANCE = 0.005  # relative difference under which two highs are "the same price"


@dataclass(frozen=True)
class _Request:
    """One history request: a symbol's conid over a chunk of sessions."""

    symbol: str
    conid: str
    first: date
    last: date
    params: dict[str, str]


class IbkrProvider(RestProvider):
    """Interactive Brokers (Client Portal Web API gateway): bars_1d and bars_1m."""

    name = "ibkr"
    datasets: tuple[str, ...] = ("bars_1d", "bars_1m")
    default_base_url = DEFAULT_BASE_URL
    default_policy = DEFAULT_POLICY
    options = OPTIONS

    def configure(self, opts: Mapping[str, Any]) -> None:
        """Options: see the module docstring."""
        self.exchanges = tuple(str(e).upper() for e in opts.get("exchanges", US_EXCHANGES))
        self.volume_multiplier = float(opts.get("volume_multiplier", 100))
        self.max_period_days = min(1000, max(1, int(opts.get("max_period_days", 1000))))
        self.verify_tls: bool | str = opts.get("verify_tls", True)
        self._conids: dict[str, str] = {str(k): str(v) for k, v in (opts.get("conids") or {}).items()}

    def client_options(self) -> dict[str, Any]:
        """No credential (the gateway holds the session); TLS verification as the `verify_tls` option says."""
        return {"classify": _classify, "verify": self.verify_tls}

    # -- extract ------------------------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """One payload per (symbol, chunk of sessions), fetched on up to `max_concurrent` threads."""
        sessions, symbols = self.sessions_and_symbols(query)
        if not sessions or not symbols:
            return []
        todo = [r for symbol in symbols for r in self._requests(query.dataset, symbol, self.conid(symbol), sessions)]
        client = self.http
        workers = max(1, min(self.policy.max_concurrent or 1, len(todo)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ibkr") as pool:
            futures = [pool.submit(client.get_json, HISTORY_PATH, r.params) for r in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [exc for f in futures if f in done and (exc := f.exception()) is not None]
            if errors:
                for f in futures:
                    f.cancel()
                raise errors[0]
        return [self._payload(query.dataset, r, f) for r, f in zip(todo, futures, strict=True)]

    def _requests(self, dataset: str, symbol: str, conid: str, sessions: Sequence[date]) -> list[_Request]:
        """Daily: chunks of at most `max_period_days` calendar days; minute: one session per request."""
        if dataset == "bars_1m":
            chunks = [[s] for s in sessions]
        else:
            chunks, current = [], [sessions[0]]
            for day in sessions[1:]:
                if (day - current[0]).days + 1 > self.max_period_days:
                    chunks.append(current)
                    current = []
                current.append(day)
            chunks.append(current)
        closes = session_bounds(sessions[0], sessions[-1], self.calendar_name)
        close_of = dict(zip(closes["session_date"].to_list(), closes["close"].to_list(), strict=True))
        out = []
        for chunk in chunks:
            first, last = chunk[0], chunk[-1]
            params = {"conid": conid, "period": f"{(last - first).days + 1}d", "bar": BARS[dataset],
                      "outsideRth": "false", "startTime": close_of[last].strftime("%Y%m%d-%H:%M:%S")}
            out.append(_Request(symbol, conid, first, last, params))
        return out

    def _payload(self, dataset: str, request: _Request, future: Future[HttpResult]) -> RawPayload:
        result = future.result()
        doc = result.json()
        if not isinstance(doc, dict):
            raise MalformedPayloadError(f"ibkr: GET {result.url}: expected an object, got {str(doc)[:120]!r}")
        key = f"{request.symbol}:{BARS[dataset]}:{request.first.isoformat()}:{request.last.isoformat()}"
        payload = payload_from(self.name, dataset, result, key, request.first, request.last)
        # Also the universe symbol the conid was resolved from (not sent: the request names the conid).
        return replace(payload, params={**payload.params, "symbol": request.symbol})

    def conid(self, symbol: str) -> str:
        """The contract id of `symbol`'s US-listed stock (pinned by the `conids` option, else searched)."""
        if symbol not in self._conids:
            result = self.http.get_json(SEARCH_PATH, {"symbol": symbol, "secType": "STK"})
            self._conids[symbol] = _pick_conid(symbol, result.json(), self.exchanges)
        return self._conids[symbol]

    # -- transform ----------------------------------------------------------------------------------

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse stored history payloads into the standard frame (values read as text, cast leniently)."""
        self.check_dataset(dataset)
        frames = [empty_standard_frame(dataset)]
        tz = exchange_timezone(self.calendar_name)
        for payload in payloads:
            doc = _read_history(payload)
            rows = doc.select(pl.col("data").explode()).filter(pl.col("data").is_not_null()).unnest("data")
            divisor = price_divisor(doc, rows)
            prices = {name: pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) / divisor
                      for c, name in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))}
            # Lots x multiplier; rounding drops the binary noise of the product (lots carry 2 decimals).
            volume = (pl.col("v").str.strip_chars().cast(pl.Float64, strict=False) * self.volume_multiplier).round(6)
            symbol = payload.params.get("symbol") or doc["symbol"][0]
            values = rows.select(**prices, volume=volume, symbol=pl.lit(symbol, pl.String))
            typed = rows.select(bar_time(epoch_utc(pl.col("t"), "ms"), dataset, tz))
            frames.append(cast_to_standard(values, dataset, payload.payload_id).with_columns(typed.to_series()))
        return pl.concat(frames, how="vertical")


def price_divisor(doc: pl.DataFrame, rows: pl.DataFrame) -> float:
    """1, or `priceFactor` when the bars turn out to be scaled by it like the summary `high` is.

    The summary `high` ("17510/472117.45/0") is the period's high times `priceFactor`; the bars are
    documented in plain prices. Bars whose highest high equals the summary high (not it divided by
    `priceFactor`) are scaled, and are divided back.
    """
    factor = _number(doc["priceFactor"][0])
    summary = _number(str(doc["high"][0] or "").split("/")[0])
    highest = None
    if rows.height:
        highest = rows.select(pl.col("h").str.strip_chars().cast(pl.Float64, strict=False).max()).item()
    if not factor or factor == 1 or not summary or not highest:
        return 1.0
    if abs(summary / factor - highest) <= _SCALE_TOLERANCE * highest:
        return 1.0
    if abs(summary - highest) <= _SCALE_TOLERANCE * highest:
        return factor
    return 1.0


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pick_conid(symbol: str, found: Any, exchanges: Sequence[str]) -> str:
    """The conid of the stock listed on a US exchange among /iserver/secdef/search results."""
    if not isinstance(found, list):
        raise MalformedPayloadError(f"ibkr: secdef search for {symbol} did not return a list: {str(found)[:160]!r}")
    seen = []
    for entry in found:
        if not isinstance(entry, dict):
            continue
        listing = str(entry.get("description") or "").upper()
        seen.append(f"{entry.get('conid')} {entry.get('companyHeader') or listing}")
        stock = any(isinstance(s, dict) and s.get("secType") == "STK" for s in entry.get("sections") or [])
        if str(entry.get("symbol", "")).upper() == symbol.upper() and stock and listing in exchanges \
                and entry.get("conid"):
            return str(entry["conid"])
    raise ProviderError(f"ibkr: no US-listed stock (exchanges {', '.join(exchanges)}) for {symbol} in the "
                        f"contract search (found: {'; '.join(seen) or 'nothing'}); pin it with the conids option")


def _read_history(payload: RawPayload) -> pl.DataFrame:
    schema = {"symbol": pl.String(), "priceFactor": pl.String(), "high": pl.String(),
              "data": pl.List(pl.Struct(dict.fromkeys(("t", "o", "h", "l", "c", "v"), pl.String)))}
    return read_json("ibkr", payload, schema)


def _classify(resp: Response) -> None:
    """401: the gateway is not logged in. An `error` body about market-data permissions (whatever the
    status) is an entitlement error; any other `error` body with HTTP 200 is a refused request."""
    if resp.status_code == 401:
        raise EntitlementError("HTTP 401: the Client Portal gateway session is not authenticated "
                               "(log in through the gateway's web page, then retry)")
    body = json_body(resp)
    error = body.get("error") if isinstance(body, dict) else None
    if not error:
        return
    text = str(error)[:200]
    if any(word in text.lower() for word in _NOT_ENTITLED):
        raise EntitlementError(f"HTTP {resp.status_code} with error: {text}", hint=_PERMISSIONS_HINT)
    if resp.status_code == 200:
        raise BadRequestError(f"HTTP 200 with error: {text}")


SPEC = ProviderSpec(IbkrProvider)  # no credential: the Client Portal gateway holds the session

__all__ = ["SPEC", "IbkrProvider", "price_divisor"]
