"""Ex-date jumps: after total adjustment, the move from the session before an ex-date to the ex-date.

A split or dividend left in the adjusted history shows as a jump on its ex-date (a 4-for-1 split as
ln(1/4)); correctly adjusted bars move there as on any other day.
"""

from __future__ import annotations

import polars as pl
import psycopg

from mdpipeline.enrich.adjustments import apply_adjustments
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.corporate_actions import read_factors

MAX_EX_DATE_LOG_RETURN = 0.2  # |ln(close_D / close_D-1)| after total adjustment; a split left in is far beyond
JUMP_SCHEMA = {"symbol": pl.String, "provider": pl.String, "session_date": pl.Date, "log_return": pl.Float64}


def ex_date_jumps(bars: pl.DataFrame, factors: pl.DataFrame) -> pl.DataFrame:
    """Total-adjusted log return from the session before each ex-date to the ex-date, per provider."""
    if factors.is_empty():
        return pl.DataFrame(schema=JUMP_SCHEMA)
    adjusted = apply_adjustments(bars, factors, "total").sort("instrument_id", "provider", "session_date")
    with_ret = adjusted.with_columns(
        (pl.col("close") / pl.col("close").shift(1)).log().over("instrument_id", "provider").alias("log_return")
    )
    ex_dates = factors.select("instrument_id", pl.col("ex_date").alias("session_date")).unique()
    return with_ret.join(ex_dates, on=["instrument_id", "session_date"], how="inner").filter(
        pl.col("log_return").is_not_null()
    ).select("symbol", "provider", "session_date", "log_return")


def stored_ex_date_jumps(conn: psycopg.Connection) -> pl.DataFrame:
    """`ex_date_jumps` of the stored daily bars and the current factors (a year before the first ex-date on)."""
    factors = read_factors(conn)
    if factors.is_empty():
        return pl.DataFrame(schema=JUMP_SCHEMA)
    lo, hi = factors["ex_date"].min(), factors["ex_date"].max()
    bars = read_bars_1d(conn, start=lo.replace(year=lo.year - 1), end=hi)  # type: ignore[union-attr]
    return ex_date_jumps(bars, factors)
