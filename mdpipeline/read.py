"""The Python read API: stored bars as polars frames, raw or adjusted, as known at a point in time.

    >>> from mdpipeline.read import bars
    >>> bars("NVDA", "2024-06-03", "2024-06-21", adjust="split")            # doctest: +SKIP
    >>> bars(["AAPL", "MSFT"], "2020-08-01", "2020-09-30", adjust="total",
    ...      as_of="2020-09-01T00:00:00Z", provider="file")                   # doctest: +SKIP

Reads go through COPY (columnar) and the adjustment is applied in polars from the factor table, so
raw rows are never rewritten and a newly learnt corporate action shows in every read at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import polars as pl
import psycopg

from mdpipeline.enrich.adjustments import ADJUST_MODES, AdjustMode, apply_adjustments, known_at
from mdpipeline.settings import Settings
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.corporate_actions import read_factors
from mdpipeline.storage.database import connect


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
) -> pl.DataFrame:
    """Daily bars of `symbols` in [start, end] on an open connection (see `bars`)."""
    if adjust not in ADJUST_MODES:
        raise ValueError(f"adjust must be one of {', '.join(ADJUST_MODES)}, not {adjust!r}")
    wanted = [symbols] if isinstance(symbols, str) else list(symbols)
    cutoff = parse_as_of(as_of)
    frame = read_bars_1d(conn, start=_as_date(start), end=_as_date(end), provider=provider,
                         symbols=[s.upper() for s in wanted])
    if cutoff is not None:
        frame = frame.filter(pl.col("ingested_at") <= cutoff)
    factors = known_at(read_factors(conn), cutoff) if adjust != "none" else None
    adjusted = apply_adjustments(frame, factors, adjust) if factors is not None else apply_adjustments(
        frame, pl.DataFrame(), "none")
    return adjusted.drop("raw_payload_id", "run_id")


def bars(
    symbols: str | Sequence[str],
    start: date | str,
    end: date | str,
    *,
    adjust: AdjustMode = "none",
    as_of: datetime | str | None = None,
    provider: str | None = None,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Daily bars of `symbols` in [start, end] (inclusive), one row per provider and session.

    `adjust`: "none" (raw), "split" or "total" (splits and cash dividends), back-adjusted so the
    latest price is unchanged. `as_of`: ignore bars and corporate actions learnt after that time.
    The columns `price_factor` and `volume_factor` say what was applied.
    """
    url = database_url or Settings.from_env().database_url
    with connect(url) as conn:
        return read_bars(conn, symbols, start, end, adjust=adjust, as_of=as_of, provider=provider)
