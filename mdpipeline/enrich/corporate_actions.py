"""One view of corporate actions across providers, as known at a point in time."""

from __future__ import annotations

from datetime import datetime

import polars as pl

ACTION_KEY = ["instrument_id", "ex_date", "action"]


def consolidate_actions(actions: pl.DataFrame, as_of: datetime | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """De-duplicate provider rows into one action per (instrument, ex_date, action).

    The values of the provider that reported it first win (ties broken by provider name), and the
    action counts as learnt when the first provider reported it. Returns (actions, disagreements):
    keys where providers report different ratios or amounts, for the asset metadata.
    """
    known = actions if as_of is None else actions.filter(pl.col("learned_at") <= as_of)
    ordered = known.sort([*ACTION_KEY, "learned_at", "provider"])
    chosen = ordered.group_by(ACTION_KEY, maintain_order=True).agg(
        pl.col("symbol").first(), pl.col("ratio").first(), pl.col("amount").first(), pl.col("currency").first(),
        pl.col("provider").first().alias("source_provider"), pl.col("learned_at").min(),
        pl.col("provider").n_unique().alias("providers"),
    )
    disagreements = (
        ordered.group_by(ACTION_KEY)
        .agg(pl.col("ratio").n_unique().alias("ratios"), pl.col("amount").n_unique().alias("amounts"),
             pl.col("provider").str.join(",").alias("providers"))
        .filter((pl.col("ratios") > 1) | (pl.col("amounts") > 1))
    )
    return chosen, disagreements
