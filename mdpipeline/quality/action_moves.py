"""What corporate actions do to raw prices and volumes, so detectors do not mistake them for errors.

On the ex-date of a split of ratio r raw prices move by -ln(r) and volumes by r; a cash dividend d
moves prices by ln(1 - d / previous close). `actions` frames have the instrument key column,
ex_date, action (split | cash_dividend), ratio and amount; the same action reported by several
providers counts once.
"""

from __future__ import annotations

import polars as pl

from mdpipeline.quality.ordering import previous

ACTION_COLUMNS = ("ex_date", "action", "ratio", "amount")


def _per_day(actions: pl.DataFrame, key: str, key_dtype: pl.DataType) -> pl.DataFrame:
    """One row per (instrument, ex_date): summed log split ratio, summed dividend, a description."""
    return (
        actions.select(pl.col(key).cast(key_dtype), *ACTION_COLUMNS)
        .unique(subset=[key, "ex_date", "action"], keep="first")
        .group_by(key, pl.col("ex_date").alias("session_date"))
        .agg(
            pl.col("ratio").filter(pl.col("action") == "split").log().sum().alias("__split_log"),
            pl.col("amount").filter(pl.col("action") == "cash_dividend").sum().alias("__dividend"),
            pl.when(pl.col("action") == "split").then(pl.format("split {}", pl.col("ratio")))
            .otherwise(pl.format("cash dividend {}", pl.col("amount"))).sort().str.join(", ").alias("__why"),
        )
    )


def expected_moves(bars: pl.DataFrame, actions: pl.DataFrame | None, key: str) -> pl.DataFrame:
    """`bars` with `__move`, the log price change actions cause, and `__why` naming them.

    The move lands on each ex-date session's first bar (`__first`), measured against the previous
    close (`__prev_close`); both columns must be there.
    """
    if actions is None or actions.is_empty():
        return bars.with_columns(pl.lit(0.0).alias("__move"), pl.lit(None, dtype=pl.String).alias("__why"))
    move = -pl.col("__split_log") + (1.0 - pl.col("__dividend") / pl.col("__prev_close")).log()
    return (
        bars.join(_per_day(actions, key, bars.schema[key]), on=[key, "session_date"], how="left",
                  maintain_order="left")
        .with_columns(pl.when(pl.col("__first")).then(move).fill_null(0.0).fill_nan(0.0).alias("__move"),
                      pl.when(pl.col("__first")).then(pl.col("__why")).alias("__why"))
        .drop("__split_log", "__dividend")
    )


def with_split_log(bars: pl.DataFrame, actions: pl.DataFrame | None, key: str) -> pl.DataFrame:
    """`bars` (in instrument-then-time order, with `ordering.with_segments`) with `__split_volume`:
    volume divided by the splits since the instrument's first bar.

    A 10-for-1 split multiplies traded share counts by 10; dividing them out keeps the volume
    baseline comparable across the ex-date.
    """
    if actions is None or actions.is_empty() or not (actions["action"] == "split").any():
        return bars.with_columns(pl.col("volume").alias("__split_volume"))
    splits = _per_day(actions.filter(pl.col("action") == "split"), key, bars.schema[key]).select(
        key, "session_date", "__split_log")
    prev_session = previous(pl.col("session_date"), key)
    first_of_session = prev_session.is_null() | (pl.col("session_date") != prev_session)
    return (
        bars.join(splits, on=[key, "session_date"], how="left", maintain_order="left")
        .with_columns(pl.when(first_of_session).then(pl.col("__split_log")).fill_null(0.0).alias("__split_log"))
        .with_columns((pl.col("volume") / pl.col("__split_log").cum_sum().over("__seg").exp()).alias("__split_volume"))
        .drop("__split_log")
    )
