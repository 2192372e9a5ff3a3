"""Canonical corporate actions: instrument ids from the symbology valid on the ex-date."""

from __future__ import annotations

import polars as pl

from mdpipeline.contracts.frames import CANONICAL_CORPORATE_ACTIONS
from mdpipeline.normalize.bars import Normalized, map_instruments


def normalize_corporate_actions(frame: pl.DataFrame, provider: str, symbology: pl.DataFrame) -> Normalized:
    """Validated standard corporate actions -> canonical rows of `provider` (splits carry no amount).

    Several cash dividends on one ex-date (a regular and a special one) are one price adjustment:
    their amounts are summed, as the adjustment rule takes the total paid per share.
    """
    mapped = map_instruments(frame, symbology, "ex_date")
    summed = mapped.bars.group_by("instrument_id", "symbol", "ex_date", "action", maintain_order=True).agg(
        pl.col("ratio").first(), pl.col("amount").sum().alias("amount"), pl.col("currency").first(),
        pl.col("raw_payload_id").max(),
    )
    actions = summed.with_columns(
        pl.lit(provider).alias("provider"),
        pl.when(pl.col("action") == "split").then(None).otherwise(pl.col("amount")).alias("amount"),
        pl.when(pl.col("action") == "split").then(pl.col("ratio")).otherwise(None).alias("ratio"),
    ).select(pl.col(c).cast(t) for c, t in CANONICAL_CORPORATE_ACTIONS.items())
    unmapped = mapped.unmapped.rename({"ex_date": "session_date"}) if "ex_date" in mapped.unmapped.columns \
        else mapped.unmapped
    return Normalized(bars=actions.sort("ex_date", "instrument_id"), unmapped=unmapped)
