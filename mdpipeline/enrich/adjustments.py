"""Back-adjustment for corporate actions (the latest price is unchanged), zipline-style factor arithmetic.

A split of ratio r on ex-date D multiplies earlier prices by 1/r and earlier volumes by r; a cash
dividend d on ex-date D multiplies earlier prices by (1 - d / raw close of the session before D).
Factors compound: a bar is multiplied by the product of the factors of every event after it.
Raw bars are never rewritten; adjusted views are computed from them and the factor table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import polars as pl

from mdpipeline.contracts.frames import FACTOR_COLUMNS, PRICE_COLUMNS

AdjustMode = Literal["none", "split", "total"]
ADJUST_MODES: tuple[str, ...] = ("none", "split", "total")


def adjustment_factors(actions: pl.DataFrame, prior_closes: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-event factors from corporate actions and the raw close of the session before each ex-date.

    `actions`: instrument_id, ex_date, action (split|cash_dividend), ratio, amount, learned_at.
    `prior_closes`: instrument_id, ex_date, prior_close.
    Returns (factors, unusable): a dividend with no prior close, or one at least as large as that
    close, cannot be turned into a factor and comes back in `unusable` with a reason.
    """
    joined = actions.join(prior_closes, on=["instrument_id", "ex_date"], how="left")
    computed = joined.with_columns(
        pl.when(pl.col("action") == "split").then(1.0 / pl.col("ratio"))
        .otherwise(1.0 - pl.col("amount") / pl.col("prior_close")).alias("price_factor"),
        pl.when(pl.col("action") == "split").then(pl.col("ratio")).otherwise(pl.lit(1.0)).alias("volume_factor"),
    )
    bad = (
        pl.col("price_factor").is_null() | pl.col("price_factor").is_nan() | (pl.col("price_factor") <= 0)
        | ~pl.col("price_factor").is_finite()
    )
    unusable = computed.filter(bad).with_columns(
        pl.when(pl.col("action") == "split").then(pl.format("split ratio {} is not usable", pl.col("ratio")))
        .when(pl.col("prior_close").is_null()).then(pl.lit("no raw close for the session before the ex-date"))
        .otherwise(pl.format("dividend {} is not below the prior close {}", pl.col("amount"), pl.col("prior_close")))
        .alias("reason")
    )
    factors = computed.filter(~bad).select(pl.col(c).cast(t) for c, t in FACTOR_COLUMNS.items())
    return factors.sort("instrument_id", "ex_date", "action"), unusable


def known_at(factors: pl.DataFrame, as_of: datetime | None) -> pl.DataFrame:
    """Only the events the pipeline had learnt by `as_of` (all when None): no look-ahead."""
    return factors if as_of is None else factors.filter(pl.col("learned_at") <= as_of)


def cumulative_factors(factors: pl.DataFrame, mode: AdjustMode) -> pl.DataFrame:
    """instrument_id, ex_date, cum_price, cum_volume: what applies to every bar before ex_date."""
    selected = factors if mode == "total" else factors.filter(pl.col("action") == "split")
    per_day = (
        selected.group_by("instrument_id", "ex_date")
        .agg(pl.col("price_factor").product(), pl.col("volume_factor").product())
        .sort("instrument_id", "ex_date", descending=[False, True])
    )
    return per_day.with_columns(
        pl.col("price_factor").cum_prod().over("instrument_id").alias("cum_price"),
        pl.col("volume_factor").cum_prod().over("instrument_id").alias("cum_volume"),
    ).select("instrument_id", "ex_date", "cum_price", "cum_volume").sort("instrument_id", "ex_date")


def apply_adjustments(bars: pl.DataFrame, factors: pl.DataFrame, mode: AdjustMode,
                      date_column: str = "session_date") -> pl.DataFrame:
    """Adjusted copy of `bars` (prices and volume), with the applied `price_factor`/`volume_factor`.

    Each bar takes the cumulative factor of the first event strictly after its session (as-of join
    forward), so a bar on the ex-date itself is already on the new basis and stays unchanged.
    """
    if mode == "none":
        return bars.with_columns(pl.lit(1.0).alias("price_factor"), pl.lit(1.0).alias("volume_factor"))
    if mode not in ADJUST_MODES:
        raise ValueError(f"unknown adjustment mode {mode!r} (one of {', '.join(ADJUST_MODES)})")
    cum = cumulative_factors(factors, mode)
    order = bars.with_row_index("__row")
    joined = order.sort(date_column).join_asof(
        cum, left_on=date_column, right_on="ex_date", by="instrument_id", strategy="forward",
        allow_exact_matches=False, check_sortedness=False,  # sorted by date, which holds within each group
    )
    adjusted = joined.with_columns(
        pl.col("cum_price").fill_null(1.0).alias("price_factor"),
        pl.col("cum_volume").fill_null(1.0).alias("volume_factor"),
    ).with_columns(
        *[(pl.col(c) * pl.col("price_factor")).alias(c) for c in PRICE_COLUMNS if c in bars.columns],
        (pl.col("volume") * pl.col("volume_factor")).alias("volume"),
    )
    return adjusted.sort("__row").drop("__row", "ex_date", "cum_price", "cum_volume")
