"""The synthetic provider: realistic, deterministic bars and corporate actions, offline.

It lets the whole pipeline (demo, tests, local development) run without network or API keys.
Determinism: each symbol's daily path is a geometric random walk (with a weak pull back to its
start level, so prices stay realistic for decades) drawn from a fixed origin session (2000-01-03)
with a generator seeded from (seed, crc32(symbol)), so the bar of (symbol, date) is the same
whatever range is queried; minute bars are drawn per (seed, symbol, date) and bridge that day's
daily bar exactly (first open, last close, high, low; volumes sum to the daily volume).

Raw prices obey the configured corporate actions, as a vendor's unadjusted prices do: from a split's
ex-date on, prices are divided by the ratio and volumes multiplied by it; on a cash dividend's
ex-date prices drop by the amount (modelled as the factor 1 - amount / previous close, so
back-adjusting recovers the continuous path).

Optional anomalies (`anomalies` option: kind, symbol, date, optionally `dataset` and for bars_1m
`ts`, default the session's first minute) corrupt the emitted rows so data-quality checks have
something to catch: broken_ohlc (high below low), negative_price (close < 0), missing (bar dropped),
duplicate (bar emitted twice, the copy with another close), spike (close and high times 3).
Kinds for the quality detectors, with optional `length` and `magnitude`: gap (`length` sessions of
the symbol missing, every minute of them for bars_1m; default 1), stale (`length` bars from the
date, or from `ts` for bars_1m, frozen at the first one's close with zero volume; default 5),
divergence (open, high, low, close and vwap moved by `magnitude` basis points, default 100: what a
second vendor disagreeing looks like), volume_spike (volume and trades times `magnitude`, default 50).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from typing import Any

import numpy as np
import polars as pl

from mdpipeline.providers.base import DATASETS, ProviderError, Query, RawPayload, empty_standard_frame
from mdpipeline.providers.files import cast_to_standard
from mdpipeline.providers.kit.options import check_options
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import session_bounds, session_dates
from mdpipeline.settings import Settings
from mdpipeline.universe import ProviderSetup

ORIGIN = date(2000, 1, 3)
ANOMALY_KINDS = ("broken_ohlc", "negative_price", "missing", "duplicate", "spike",
                 "gap", "stale", "divergence", "volume_spike")
_DEFAULT_LENGTH = {"gap": 1, "stale": 5}
_DEFAULT_MAGNITUDE = {"divergence": 100.0, "volume_spike": 50.0}
_PRICES = ("open", "high", "low", "close")
# Vendor field names per dataset (all read back as text, then cast).
_FIELDS = {
    "bars_1d": ("symbol", "date", *_PRICES, "volume", "vwap", "trades"),
    "bars_1m": ("symbol", "ts", *_PRICES, "volume", "vwap", "trades"),
    "corporate_actions": ("symbol", "ex_date", "action", "ratio", "amount", "currency"),
}
JOINED_CSV_BODY_MAX = 1 << 20  # bytes; larger CSV bodies are read one by one (see `transform`)
_LIST_KEY = {"bars_1d": "bars", "bars_1m": "bars", "corporate_actions": "actions"}


@dataclass(frozen=True)
class CorporateAction:
    """A configured corporate action the raw price path obeys."""

    symbol: str
    ex_date: date
    action: str  # split | cash_dividend
    ratio: float | None = None
    amount: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Anomaly:
    """A configured corruption of one emitted bar."""

    kind: str
    symbol: str
    day: date
    dataset: str | None = None  # None: both bar datasets
    ts: datetime | None = None  # bars_1m: the minute to corrupt (default: the session's first)
    length: int | None = None  # gap: sessions, stale: bars (default per kind)
    magnitude: float | None = None  # divergence: basis points, volume_spike: factor (default per kind)


def _symbol_key(symbol: str) -> int:
    """A stable per-symbol integer (Python's hash() is salted per process)."""
    return zlib.crc32(symbol.encode())


def _as_date(value: Any, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ProviderError(f"synthetic provider: {what} is not an ISO date: {value!r}") from None


def _parse_actions(entries: list[dict[str, Any]], calendar_name: str) -> tuple[CorporateAction, ...]:
    actions = []
    for e in entries:
        ex = _as_date(e.get("ex_date"), f"corporate action {e} ex_date")
        kind = str(e.get("action"))
        if kind == "split":
            ratio = float(e.get("ratio", 0))
            if ratio <= 0:
                raise ProviderError(f"synthetic provider: split {e} needs a positive ratio")
            act = CorporateAction(str(e["symbol"]), ex, kind, ratio=ratio)
        elif kind == "cash_dividend":
            amount = float(e.get("amount", 0))
            if amount <= 0:
                raise ProviderError(f"synthetic provider: dividend {e} needs a positive amount")
            act = CorporateAction(str(e["symbol"]), ex, kind, amount=amount,
                                  currency=str(e.get("currency", "USD")))
        else:
            raise ProviderError(f"synthetic provider: action of {e} must be split or cash_dividend")
        if session_dates(ex, ex, calendar_name) != [ex]:
            raise ProviderError(f"synthetic provider: ex_date of {e} is not a {calendar_name} session")
        actions.append(act)
    return tuple(sorted(actions, key=lambda a: (a.symbol, a.ex_date)))


def _parse_anomalies(entries: list[dict[str, Any]]) -> tuple[Anomaly, ...]:
    out = []
    for e in entries:
        if e.get("kind") not in ANOMALY_KINDS:
            raise ProviderError(f"synthetic provider: anomaly kind of {e} must be one of {ANOMALY_KINDS}")
        ts = datetime.fromisoformat(str(e["ts"]).replace("Z", "+00:00")) if e.get("ts") else None
        if ts is not None:  # a ts without offset is taken as UTC
            ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        out.append(Anomaly(
            kind=str(e["kind"]), symbol=str(e["symbol"]), day=_as_date(e.get("date"), f"anomaly {e} date"),
            dataset=e.get("dataset"),
            ts=ts,
            length=int(e["length"]) if e.get("length") is not None else _DEFAULT_LENGTH.get(str(e["kind"])),
            magnitude=(float(e["magnitude"]) if e.get("magnitude") is not None
                       else _DEFAULT_MAGNITUDE.get(str(e["kind"]))),
        ))
    return tuple(out)


def _round(x: np.ndarray, decimals: int = 2) -> np.ndarray:
    return np.round(x, decimals)


def daily_path(seed: int, symbol: str, sessions: Sequence[date],
               actions: Sequence[CorporateAction] = ()) -> dict[str, np.ndarray]:
    """Raw daily bars of `symbol` for `sessions` (all sessions from ORIGIN on, in order).

    Every per-session draw comes from one row of a (n, 6) normal matrix, so a longer range only
    appends rows: the first bars never change.
    """
    key = _symbol_key(symbol)
    u = np.random.default_rng([seed, key, 0]).random(4)
    start = 20.0 * 25.0 ** u[0]  # 20 .. 500
    sigma = (0.25 + 0.15 * u[1]) / np.sqrt(252.0)  # annual vol 25% .. 40%
    base_volume = np.exp(np.log(2e6) + u[2] * np.log(30.0))  # 2M .. 60M shares
    trade_size = 80.0 + 120.0 * u[3]
    n = len(sessions)
    z = np.random.default_rng([seed, key, 1]).standard_normal((n, 6))
    # log price = log(start) + an AR(1) with a ~3-year half-life: a random walk day to day that keeps
    # prices at realistic levels decades after ORIGIN. Closed form phi**t * cumsum(phi**-k * eps_k),
    # a sequential sum, so a prefix of the sessions always gives the same values.
    phi = 0.5 ** (1.0 / 756.0)
    k = np.arange(n)
    close = start * np.exp(phi**k * np.cumsum(phi ** -k * sigma * z[:, 0]))
    prev = np.concatenate(([start], close[:-1]))
    open_ = prev * np.exp(0.25 * sigma * z[:, 1])
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * np.abs(z[:, 2]))
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * np.abs(z[:, 3]))
    volume = base_volume * np.exp(0.35 * z[:, 4] - 0.06125)
    price_f, volume_f = _action_factors(sessions, close, [a for a in actions if a.symbol == symbol])
    o, h, lo, c = (_round(x * price_f) for x in (open_, high, low, close))
    typical = (h + lo + c) / 3.0 + 0.1 * (h - lo) * np.clip(z[:, 5], -1.5, 1.5)
    return {
        "open": o, "high": h, "low": lo, "close": c,
        "volume": np.round(volume * volume_f),
        "vwap": np.clip(_round(typical, 4), lo, h),
        "trades": np.maximum(1, np.round(volume / trade_size)).astype(np.int64),
    }


def _action_factors(sessions: Sequence[date], close: np.ndarray,
                    actions: Sequence[CorporateAction]) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers turning the continuous path into raw prices/volumes (one loop step per action)."""
    price_f = np.ones(len(sessions))
    volume_f = np.ones(len(sessions))
    if not actions:
        return price_f, volume_f
    ordinals = np.fromiter((d.toordinal() for d in sessions), dtype=np.int64, count=len(sessions))
    for act in sorted(actions, key=lambda a: a.ex_date):
        i = int(np.searchsorted(ordinals, act.ex_date.toordinal()))
        if i >= len(sessions) or i == 0:
            continue
        if act.action == "split":
            price_f[i:] /= act.ratio
            volume_f[i:] *= act.ratio
        else:
            factor = 1.0 - act.amount / (close[i - 1] * price_f[i - 1])
            if factor <= 0:
                raise ProviderError(f"synthetic provider: dividend {act} exceeds the price")
            price_f[i:] *= factor
    return price_f, volume_f


def minute_path(seed: int, symbol: str, day: date, bar: dict[str, Any],
                minutes: int) -> dict[str, np.ndarray]:
    """`minutes` one-minute bars bridging the daily `bar` of `day` (a scaled Brownian bridge)."""
    frame = pl.DataFrame({"symbol": [symbol], "session_date": [day],
                          **{k: [bar[k]] for k in ("open", "high", "low", "close", "volume", "trades")}})
    paths = minute_paths(seed, frame, minutes)
    return {k: v[0] for k, v in paths.items()}


def minute_paths(seed: int, days: pl.DataFrame, minutes: int) -> dict[str, np.ndarray]:
    """`minutes` one-minute bars bridging each daily bar of `days` (one row per symbol and session).

    Returns (rows, minutes) arrays. Each day draws from its own generator seeded with (seed, symbol,
    date), so a day's minutes are the same whatever range is asked for; everything else is computed
    for all days at once.
    """
    n = days.height
    o, h, lo, c, v, trades = (days[k].to_numpy().astype(np.float64)[:, None]
                              for k in ("open", "high", "low", "close", "volume", "trades"))
    keys = [_symbol_key(sym) for sym in days["symbol"].to_list()]
    ordinals = [d.toordinal() for d in days["session_date"].to_list()]
    draws = np.empty((n, 4, minutes))
    for i in range(n):
        draws[i] = np.random.default_rng([seed, keys[i], 2, ordinals[i]]).standard_normal((4, minutes))
    steps, wick_up, wick_dn, vol_noise = draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3]
    t = np.arange(minutes + 1) / minutes
    walk = np.concatenate((np.zeros((n, 1)), np.cumsum(steps, axis=1)), axis=1)
    bridge = walk - t * walk[:, -1:]
    line = o * (1.0 - t) + c * t
    up, dn = bridge > 0, bridge < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s_up = np.where(up, (h - line) / np.where(up, bridge, 1.0), np.inf).min(axis=1, keepdims=True)
        s_dn = np.where(dn, (line - lo) / np.where(dn, -bridge, 1.0), np.inf).min(axis=1, keepdims=True)
    s_up[~np.isfinite(s_up)] = 0.0
    s_dn[~np.isfinite(s_dn)] = 0.0
    path = np.clip(_round(line + np.where(up, bridge * s_up, bridge * s_dn)), lo, h)
    path[:, :1], path[:, -1:] = o, c
    m_open, m_close = path[:, :-1], path[:, 1:]
    wick = 0.25 * (h - lo) / np.sqrt(minutes)
    m_high = np.clip(_round(np.maximum(m_open, m_close) + wick * np.abs(wick_up)), lo, h)
    m_low = np.clip(_round(np.minimum(m_open, m_close) - wick * np.abs(wick_dn)), lo, h)
    rows = np.arange(n)
    m_high[rows, np.argmax(m_high, axis=1)] = h[:, 0]
    m_low[rows, np.argmin(m_low, axis=1)] = lo[:, 0]
    k = np.arange(minutes)
    profile = 1.0 + 2.5 * np.exp(-k / 20.0) + 1.5 * np.exp(-(minutes - 1 - k) / 15.0)  # U-shaped day
    profile = profile * np.exp(0.4 * vol_noise)
    m_volume = np.floor(v * profile / profile.sum(axis=1, keepdims=True))
    m_volume[rows, np.argmax(profile, axis=1)] += (v - m_volume.sum(axis=1, keepdims=True))[:, 0]
    per_trade = v / np.maximum(trades, 1)
    m_trades = np.where(m_volume > 0, np.maximum(1, np.round(m_volume / np.maximum(per_trade, 1.0))), 0)
    return {
        "open": m_open, "high": m_high, "low": m_low, "close": m_close, "volume": m_volume,
        "vwap": np.clip(_round((m_open + m_high + m_low + m_close) / 4.0, 4), m_low, m_high),
        "trades": m_trades.astype(np.int64),
    }


class SyntheticProvider:
    """Deterministic synthetic market data (see the module docstring)."""

    name = "synthetic"
    datasets: tuple[str, ...] = DATASETS
    options: frozenset[str] = frozenset({"seed", "corporate_actions", "anomalies"})

    def __init__(self, setup: ProviderSetup, calendar_name: str = "XNYS") -> None:
        check_options(self.name, setup.options, self.options)
        self.setup = setup
        self.calendar_name = calendar_name
        self.seed = int(setup.options.get("seed", 7))
        self.actions = _parse_actions(setup.options.get("corporate_actions") or [], calendar_name)
        self.anomalies = _parse_anomalies(setup.options.get("anomalies") or [])

    @classmethod
    def from_settings(cls, setup: ProviderSetup, settings: Settings, calendar_name: str, *,
                      limits_store: LimitsStore | None = None) -> SyntheticProvider:
        """The provider for `setup` (it needs nothing from the surroundings, and sends no request)."""
        return cls(setup, calendar_name=calendar_name)

    # -- generation (clean data, before anomalies) ------------------------------------------------

    def daily_bars(self, symbols: Sequence[str], start: date, end: date) -> pl.DataFrame:
        """Clean raw daily bars: symbol, session_date, open, high, low, close, volume, vwap, trades.

        Sessions before ORIGIN have no bars.
        """
        sessions = session_dates(ORIGIN, end, self.calendar_name)
        first = bisect_left(sessions, start)
        frames = [_DAILY_EMPTY]
        days = pl.Series("session_date", sessions[first:], dtype=pl.Date)
        for symbol in symbols if first < len(sessions) else ():
            path = daily_path(self.seed, symbol, sessions, self.actions)
            frames.append(pl.DataFrame({k: v[first:] for k, v in path.items()}).with_columns(
                days, symbol=pl.lit(symbol)))
        return pl.concat([f.select(_DAILY_EMPTY.columns).cast(_DAILY_EMPTY.schema) for f in frames]).sort(
            "session_date", "symbol", maintain_order=True)

    def minute_bars(self, symbols: Sequence[str], start: date, end: date) -> pl.DataFrame:
        """Clean minute bars (`ts` = bar start, UTC) for every minute of each session, half days too."""
        bounds = session_bounds(start, end, self.calendar_name).rename(
            {"open": "session_open", "close": "session_close"})
        days = self.daily_bars(symbols, start, end).join(bounds, on="session_date", maintain_order="left")
        days = days.with_columns(((pl.col("session_close") - pl.col("session_open")).dt.total_minutes())
                                 .alias("__minutes"))
        frames = [_MINUTE_EMPTY]
        for (minutes,), group in days.partition_by("__minutes", as_dict=True, maintain_order=True).items():
            count = int(minutes)  # type: ignore[call-overload]
            paths = minute_paths(self.seed, group, count)
            frames.append(
                group.select("symbol", "session_date", "session_open")
                .with_columns(pl.int_ranges(0, count, dtype=pl.Int64).alias("__k")).explode("__k")
                .with_columns((pl.col("session_open") + pl.duration(minutes=pl.col("__k"))).alias("ts"))
                .with_columns(**{name: pl.Series(values.ravel()) for name, values in paths.items()})
                .select(_MINUTE_EMPTY.columns))
        return pl.concat([f.cast(_MINUTE_EMPTY.schema) for f in frames]).sort(
            "ts", "symbol", maintain_order=True)

    # -- the provider contract --------------------------------------------------------------------

    def extract(self, query: Query) -> list[RawPayload]:
        """One CSV payload per session date in [start, end] (a vendor's flat file); holidays/weekends yield none.

        Sessions before ORIGIN get payloads with no rows. The request key names the session and the
        symbols asked for, so payloads of different symbol sets never hide each other.

        corporate_actions: a payload for every session date too, listing the actions (of the queried
        symbols) whose ex_date is that session, possibly none, so every partition records the fetch.
        """
        if query.dataset not in self.datasets:
            raise ProviderError(f"synthetic provider has no dataset {query.dataset!r}")
        symbols = tuple(query.symbols or self.setup.symbols)
        if query.dataset == "corporate_actions":
            rows = self._actions_frame(symbols, query.start, query.end)
        elif query.dataset == "bars_1d":
            rows = self._apply_anomalies(self.daily_bars(symbols, query.start, query.end), "bars_1d")
        else:
            rows = self._apply_anomalies(self.minute_bars(symbols, query.start, query.end), "bars_1m")
        by_day = rows.partition_by("session_date", as_dict=True, maintain_order=True)
        fetched_at = datetime.now(UTC)
        digest = hashlib.sha256("\n".join(sorted(symbols)).encode()).hexdigest()[:12]
        payloads = []
        for day in session_dates(query.start, query.end, self.calendar_name):
            part = by_day.get((day,), rows.clear())
            payloads.append(RawPayload(
                provider=self.name,
                dataset=query.dataset,
                session_date=day,
                request_key=f"{query.dataset}:{day.isoformat()}:{digest}",
                endpoint=f"synthetic://{query.dataset}",
                params={"session": day.isoformat(), "symbols": list(symbols), "seed": self.seed},
                body=self._body(query.dataset, part),
                content_type="text/csv",
                fetched_at=fetched_at,
                symbols=symbols,
            ))
        return payloads

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse the bodies (every field as text) and cast them into the standard frame.

        CSV bodies are what `extract` writes; consecutive small ones with the same header are read as
        one document (a range of few symbols holds a small payload per session, and reading them one
        by one cost about a millisecond each; a large body is read alone, where joining would only
        copy it). JSON bodies (`{"bars": [...]}`) are what earlier versions stored, and
        stay readable so old raw payloads replay.
        """
        if dataset not in self.datasets:
            raise ProviderError(f"synthetic provider has no dataset {dataset!r}")
        text = dict.fromkeys(_FIELDS[dataset], pl.String)
        frames = [empty_standard_frame(dataset)]
        for header, group in groupby(payloads, key=_csv_header):
            batch = list(group)
            joined = _read_joined_csv(batch, header, text) if header is not None else None
            if joined is not None:
                rows, payload_ids = joined
                frames.append(cast_to_standard(rows, dataset, None).with_columns(payload_ids))
                continue
            frames.extend(cast_to_standard(self._read_one(dataset, payload, text), dataset, payload.payload_id)
                          for payload in batch)
        return pl.concat(frames, how="vertical")

    @staticmethod
    def _read_one(dataset: str, payload: RawPayload, text: dict[str, Any]) -> pl.DataFrame:
        """One payload's rows, every field as text; a clear error naming it when it does not parse."""
        try:
            if payload.content_type == "text/csv":
                return pl.read_csv(io.BytesIO(payload.body), schema_overrides=text, infer_schema=False)
            key = _LIST_KEY[dataset]
            doc = pl.read_json(io.BytesIO(payload.body), schema={key: pl.List(pl.Struct(text))})
            return doc.select(pl.col(key).explode()).filter(pl.col(key).is_not_null()).unnest(key)
        except pl.exceptions.PolarsError as exc:
            raise ProviderError(f"synthetic provider: payload {payload.request_key} is not readable: {exc}") from exc

    # -- helpers ----------------------------------------------------------------------------------

    def _actions_frame(self, symbols: Sequence[str], start: date, end: date) -> pl.DataFrame:
        acts = [a for a in self.actions if a.symbol in symbols and start <= a.ex_date <= end]
        return pl.DataFrame(
            {"symbol": [a.symbol for a in acts], "ex_date": [a.ex_date for a in acts],
             "action": [a.action for a in acts], "ratio": [a.ratio for a in acts],
             "amount": [a.amount for a in acts], "currency": [a.currency for a in acts]},
            schema={"symbol": pl.String, "ex_date": pl.Date, "action": pl.String, "ratio": pl.Float64,
                    "amount": pl.Float64, "currency": pl.String},
        ).with_columns(session_date=pl.col("ex_date"))

    def _apply_anomalies(self, bars: pl.DataFrame, dataset: str) -> pl.DataFrame:
        """Corrupt the configured bars (one frame operation per configured anomaly)."""
        for a in self.anomalies:
            if a.dataset not in (None, dataset):
                continue
            if a.kind in ("gap", "stale", "divergence", "volume_spike"):
                bars = self._apply_quality_anomaly(bars, dataset, a)
                continue
            hit = (pl.col("symbol") == a.symbol) & (pl.col("session_date") == a.day)
            if dataset == "bars_1m":
                first_minute = pl.col("ts").filter(hit).min()
                minute = pl.lit(a.ts, dtype=pl.Datetime("us", "UTC")) if a.ts else first_minute
                hit = hit & (pl.col("ts") == minute)
            hit = hit.fill_null(False)
            if a.kind == "missing":
                bars = bars.filter(~hit)
            elif a.kind == "duplicate":  # another close; a flat bar (high == low) gets one tick more
                other = (pl.when(pl.col("close") != pl.col("high")).then(pl.col("high"))
                         .when(pl.col("close") != pl.col("low")).then(pl.col("low"))
                         .otherwise(pl.col("close") + 0.01))
                copy = bars.filter(hit).with_columns(close=other).with_columns(
                    high=pl.max_horizontal("high", "close"))
                bars = pl.concat([bars, copy])
            else:
                bars = bars.with_columns(**{
                    name: pl.when(hit).then(expr).otherwise(pl.col(name))
                    for name, expr in _CORRUPT[a.kind].items()})
        sort_key = "ts" if dataset == "bars_1m" else "session_date"
        return bars.sort(sort_key, "symbol", maintain_order=True)

    def _apply_quality_anomaly(self, bars: pl.DataFrame, dataset: str, a: Anomaly) -> pl.DataFrame:
        """gap, stale, divergence, volume_spike (see the module docstring); one frame operation each."""
        length = a.length or 1
        if a.kind in ("gap", "stale") and (dataset == "bars_1d" or a.kind == "gap"):
            days = session_dates(a.day, a.day + timedelta(days=2 * length + 10), self.calendar_name)[:length]
            hit = (pl.col("symbol") == a.symbol) & pl.col("session_date").is_in(days)
        else:
            hit = (pl.col("symbol") == a.symbol) & (pl.col("session_date") == a.day)
            if dataset == "bars_1m":
                first = pl.lit(a.ts, dtype=pl.Datetime("us", "UTC")) if a.ts else pl.col("ts").filter(hit).min()
                bars_of_run = length if a.kind == "stale" else 1
                hit = hit & pl.col("ts").is_between(first, first + timedelta(minutes=bars_of_run - 1))
        hit = hit.fill_null(False)
        if a.kind == "gap":
            return bars.filter(~hit)
        if a.kind == "stale":
            frozen = pl.lit(self._clean_close(a, dataset), dtype=pl.Float64)
            changes = dict.fromkeys((*_PRICES, "vwap"), frozen)
            changes |= {"volume": pl.lit(0.0), "trades": pl.lit(0, dtype=pl.Int64)}
        elif a.kind == "divergence":
            factor = 1.0 + (a.magnitude or 0.0) / 10_000.0
            changes = {name: pl.col(name) * factor for name in (*_PRICES, "vwap")}
        else:  # volume_spike
            factor = a.magnitude or 1.0
            changes = {"volume": (pl.col("volume") * factor).round(0),
                       "trades": (pl.col("trades") * factor).round(0).cast(pl.Int64)}
        return bars.with_columns(**{
            name: pl.when(hit).then(expr).otherwise(pl.col(name)) for name, expr in changes.items()})

    def _clean_close(self, a: Anomaly, dataset: str) -> float | None:
        """Close of the anomaly's first bar before any corruption: the same whatever range is queried."""
        if dataset == "bars_1d":
            bars = self.daily_bars([a.symbol], a.day, a.day)
        else:
            bars = self.minute_bars([a.symbol], a.day, a.day)
            bars = bars.filter(pl.col("ts") == (a.ts or bars["ts"].min()))
        return bars["close"].item() if bars.height else None

    def _body(self, dataset: str, rows: pl.DataFrame) -> bytes:
        """A vendor-like CSV file of one session's rows (header always present)."""
        if dataset == "bars_1d":
            rows = rows.select("symbol", pl.col("session_date").dt.to_string("%Y-%m-%d").alias("date"),
                               *_PRICES, "volume", "vwap", "trades")
        elif dataset == "bars_1m":
            rows = rows.select("symbol", pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%SZ").alias("ts"),
                               *_PRICES, "volume", "vwap", "trades")
        else:
            rows = rows.select("symbol", pl.col("ex_date").dt.to_string("%Y-%m-%d"),
                               "action", "ratio", "amount", "currency")
        return rows.write_csv().encode()


_BAR_SCHEMA = {**dict.fromkeys(_PRICES, pl.Float64), "volume": pl.Float64, "vwap": pl.Float64,
               "trades": pl.Int64}
_DAILY_EMPTY = pl.DataFrame(schema={"symbol": pl.String, "session_date": pl.Date, **_BAR_SCHEMA})
_MINUTE_EMPTY = pl.DataFrame(schema={"symbol": pl.String, "session_date": pl.Date,
                                     "ts": pl.Datetime("us", "UTC"), **_BAR_SCHEMA})
_CORRUPT: dict[str, dict[str, pl.Expr]] = {
    "broken_ohlc": {"high": pl.col("low") - (pl.col("high") - pl.col("low")) - 0.01},
    "negative_price": {"close": -pl.col("close").abs() - 0.01},
    "spike": {"close": pl.col("close") * 3, "high": pl.col("high") * 3},
}

# Real-time: `mdpipeline stream --provider synthetic` lands Alpaca-shaped frames; gaps are repaired from the
# same deterministic history.
SPEC = ProviderSpec(SyntheticProvider, network=False, stream_frames="alpaca",
                    gap_repair="mdpipeline.stream.gap_repair:SyntheticTrades")

__all__ = ["ORIGIN", "SPEC", "Anomaly", "CorporateAction", "SyntheticProvider", "daily_path", "minute_path",
           "minute_paths"]


def _csv_header(payload: RawPayload) -> bytes | None:
    """The header line of a small CSV payload (None for any other body)."""
    if payload.content_type != "text/csv" or len(payload.body) > JOINED_CSV_BODY_MAX:
        return None
    end = payload.body.find(b"\n")
    return payload.body if end < 0 else payload.body[:end]


def _read_joined_csv(payloads: list[RawPayload], header: bytes,
                     text: dict[str, Any]) -> tuple[pl.DataFrame, pl.Series] | None:
    """CSV payloads sharing `header` read as one document, with each row's `raw_payload_id`.

    A payload's rows are counted by its line ends; the document must read into exactly that many
    rows, so every line was one row (a quoted line break or a skipped blank line would leave fewer)
    and the counts say which payload each row came from. None when that does not hold, or a body
    has a carriage return; the caller then reads the payloads one by one.
    """
    parts: list[bytes | memoryview] = [header, b"\n"]
    counts = []
    for payload in payloads:
        body, skip = payload.body, len(header) + 1
        if b"\r" in body:
            return None
        count = body.count(b"\n", skip)
        parts.append(memoryview(body)[skip:])
        if len(body) > skip and not body.endswith(b"\n"):
            parts.append(b"\n")
            count += 1
        counts.append(count)
    try:
        rows = pl.read_csv(b"".join(parts), schema_overrides=text, infer_schema=False)
    except pl.exceptions.PolarsError:
        return None
    if rows.height != sum(counts):
        return None
    ids = pl.Series("raw_payload_id", [payload.payload_id for payload in payloads], dtype=pl.Int64)
    return rows, ids.gather(np.repeat(np.arange(len(payloads)), counts))
