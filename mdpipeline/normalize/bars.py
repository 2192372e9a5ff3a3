"""Canonical daily bars: instrument ids from symbology (valid at the session date) and provider lineage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from mdpipeline.contracts.frames import CANONICAL_BARS_1D


@dataclass(frozen=True)
class Normalized:
    """Canonical rows, and rows whose symbol no instrument held on that date (with a reason)."""

    bars: pl.DataFrame
    unmapped: pl.DataFrame


def map_instruments(frame: pl.DataFrame, symbology: pl.DataFrame, date_column: str) -> Normalized:
    """Attach `instrument_id` by (symbol, date within [valid_from, valid_to])."""
    indexed = frame.with_row_index("__row")
    matched = (
        indexed.join(symbology, on="symbol", how="inner")
        .filter(pl.col(date_column).is_between(pl.col("valid_from"), pl.col("valid_to")))
        .drop("valid_from", "valid_to")
    )
    unmapped = indexed.join(matched.select("__row"), on="__row", how="anti").drop("__row")
    reasons = unmapped.with_columns(
        pl.lit("symbology").alias("check_name"),
        pl.format("no instrument holds symbol {} on {}", pl.col("symbol"), pl.col(date_column)).alias("reason"),
        pl.struct(frame.columns).struct.json_encode().alias("row_data"),  # the row itself is never lost
    )
    return Normalized(bars=matched.sort("__row").drop("__row"), unmapped=reasons)


def normalize_bars_1d(frame: pl.DataFrame, provider: str, symbology: pl.DataFrame) -> Normalized:
    """Validated standard daily bars -> canonical daily bars of `provider`."""
    mapped = map_instruments(frame, symbology, "session_date")
    bars = mapped.bars.with_columns(pl.lit(provider).alias("provider")).select(
        pl.col(name).cast(dtype) for name, dtype in CANONICAL_BARS_1D.items()
    )
    return Normalized(bars=bars.sort("session_date", "instrument_id"), unmapped=mapped.unmapped)


def stamp(frame: pl.DataFrame, run_id: str, ingested_at: datetime) -> pl.DataFrame:
    """Add the run that stored the rows and when the pipeline learnt them (point-in-time reads)."""
    return frame.with_columns(
        pl.lit(run_id).alias("run_id"),
        pl.lit(ingested_at).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
    )
