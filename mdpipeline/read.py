"""The Python read API: stored bars as polars frames, raw or adjusted, as known at a point in time.

    >>> from mdpipeline.read import bars
    >>> bars("NVDA", "2024-06-03", "2024-06-21", adjust="split")            # doctest: +SKIP
    >>> bars(["AAPL", "MSFT"], "2020-08-01", "2020-09-30", adjust="total",
    ...      as_of="2020-09-01T00:00:00Z", provider="file")                   # doctest: +SKIP
    >>> bars("AAPL", "2024-06-10", "2024-06-14", interval="1h")             # doctest: +SKIP

Reads go through COPY (columnar) and the adjustment is applied in polars from the factor table, so
raw rows are never rewritten and a newly learnt corporate action shows in every read at once.
Intervals 5m, 15m and 1h are roll-ups of the minute bars (`storage.rollups`); an adjusted roll-up
equals the roll-up of the adjusted minute bars, since a bucket never spans two sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import polars as pl
import psycopg

from mdpipeline.enrich.adjustments import ADJUST_MODES, AdjustMode, apply_adjustments, known_at
from mdpipeline.settings import Settings
from mdpipeline.storage.bars import instruments_for_symbols, read_bars_1d, read_bars_1m, read_rollup
from mdpipeline.storage.corporate_actions import read_factors
from mdpipeline.storage.database import connect
from mdpipeline.storage.rollups import ROLLUPS

READERS = {"1d": read_bars_1d, "1m": read_bars_1m}
INTERVALS = (*READERS, *ROLLUPS)  # 1d, 1m, 5m, 15m, 1h


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def parse_as_of(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime from an ISO string or datetime (a date alone means its start, UTC)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_bars(
    conn: psycopg.Connection,
    symbols: str | Sequence[str],
    start: date | str,
    end: date | str,
    *,
    adjust: AdjustMode = "none",
    as_of: datetime | str | None = None,
    provider: str | None = None,
    interval: str = "1d",
) -> pl.DataFrame:
    """Bars of `symbols` in [start, end] on an open connection (see `bars`)."""
    if adjust not in ADJUST_MODES:
        raise ValueError(f"adjust must be one of {', '.join(ADJUST_MODES)}, not {adjust!r}")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}, not {interval!r}")
    wanted = [s.upper() for s in ([symbols] if isinstance(symbols, str) else symbols)]
    cutoff = parse_as_of(as_of)
    ids = instruments_for_symbols(conn, wanted)
    scope = {"start": _as_date(start), "end": _as_date(end), "provider": provider, "as_of": cutoff,
             **({"instrument_ids": ids} if ids else {"symbols": wanted})}
    frame = READERS[interval](conn, **scope) if interval in READERS else read_rollup(conn, interval, **scope)
    factors = known_at(read_factors(conn), cutoff) if adjust != "none" else None
    adjusted = apply_adjustments(frame, factors, adjust) if factors is not None else apply_adjustments(
        frame, pl.DataFrame(), "none")
    return adjusted.drop([c for c in ("raw_payload_id", "run_id") if c in adjusted.columns])


def bars(
    symbols: str | Sequence[str],
    start: date | str,
    end: date | str,
    *,
    interval: str = "1d",
    adjust: AdjustMode = "none",
    as_of: datetime | str | None = None,
    provider: str | None = None,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Bars of `symbols` for the sessions [start, end] (inclusive), one row per provider and bar.

    A symbol means every instrument that ever held it, over its whole history (asking for META
    also returns the FB-era bars of the same company). `interval`: "1d", "1m", or a roll-up of the
    minute bars, "5m", "15m" or "1h" (`ts` is the bucket start, `bars` the minute bars in it).
    `adjust`: "none" (raw), "split" or "total" (splits and cash dividends), back-adjusted so the
    latest price is unchanged. `as_of`: what was known at that time: bars learnt later are left out,
    bars corrected later have their earlier value, corporate actions learnt later are ignored. The
    columns `price_factor` and `volume_factor` say what was applied.
    """
    url = database_url or Settings.from_env().database_url
    with connect(url) as conn:
        return read_bars(conn, symbols, start, end, adjust=adjust, as_of=as_of, provider=provider,
                         interval=interval)
