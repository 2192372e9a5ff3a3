"""Trade actions -> canonical ticks: validation (rejects with reasons), instrument ids, session dates."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mdpipeline.contracts.realtime import CANONICAL_TICKS
from mdpipeline.normalize.bars import map_instruments
from mdpipeline.sessions import exchange_timezone


@dataclass(frozen=True)
class Ticks:
    """Valid canonical ticks in raw order, and rejected actions with check name and reason."""

    ticks: pl.DataFrame
    rejected: pl.DataFrame


def _reasons() -> pl.Expr:
    checks = [
        pl.when(pl.col("symbol").is_null()).then(pl.lit("missing_value: symbol is missing")),
        pl.when(pl.col("ts").is_null())
        .then(pl.lit("missing_value: timestamp missing, not RFC 3339 or outside 1970..2199")),
        pl.when(pl.col("sequence").is_null()).then(pl.lit("missing_value: trade id is missing")),
        pl.when((pl.col("action") == "new") & ~(pl.col("price") > 0).fill_null(False))
        .then(pl.format("value_range: price must be > 0 and finite, got {}", pl.col("price"))),
        pl.when((pl.col("action") == "new") & ~(pl.col("size") > 0).fill_null(False))
        .then(pl.format("value_range: size must be > 0, got {}", pl.col("size"))),
    ]
    return pl.concat_str(checks, separator="; ", ignore_nulls=True).replace("", None)


def _whole_corrections(checked: pl.DataFrame) -> pl.DataFrame:
    """A correction is two actions (the original's cancel, then the corrected trade, the next position of
    the same frame): when the corrected trade is rejected the cancel is too, so the original trade stays
    stored instead of vanishing without its replacement."""
    frame = ["offset"] if "offset" in checked.columns else []  # repaired history has no raw offsets
    failed = checked.filter((pl.col("action") == "new") & pl.col("corrects").is_not_null()
                            & pl.col("reason").is_not_null()).select(
        *frame, (pl.col("position") - 1).alias("position"), pl.col("corrects").alias("sequence"),
        pl.format("correction_rejected: the corrected trade {} was rejected ({})", pl.col("sequence"),
                  pl.col("reason")).alias("_whole"))
    if not failed.height:
        return checked
    paired = checked.join(failed, on=[*frame, "position", "sequence"], how="left", maintain_order="left")
    cancel = (pl.col("action") == "cancel") & pl.col("_whole").is_not_null()
    return paired.with_columns(pl.when(cancel).then(pl.col("_whole")).otherwise(pl.col("reason")).alias("reason")
                               ).drop("_whole")


def normalize_ticks(actions: pl.DataFrame, symbology: pl.DataFrame, calendar_name: str = "XNYS") -> Ticks:
    """Validate trade actions and attach instrument ids by symbology valid on the exchange-local date."""
    tz = exchange_timezone(calendar_name)
    checked = _whole_corrections(actions.with_columns(
        pl.col("price").replace([float("inf"), float("-inf")], None).fill_nan(None),
        pl.col("ts").dt.convert_time_zone(tz).dt.date().alias("session_date"),
        _reasons().alias("reason"),
    ))
    invalid = checked.filter(pl.col("reason").is_not_null()).with_columns(
        pl.col("reason").str.split(":").list.first().alias("check_name"))
    mapped = map_instruments(checked.filter(pl.col("reason").is_null()).drop("reason"), symbology, "session_date")
    rejected = pl.concat([invalid, mapped.unmapped.with_columns(pl.col("check_name"), pl.col("reason"))],
                         how="diagonal_relaxed")
    ticks = mapped.bars.select(pl.col(c).cast(t) for c, t in CANONICAL_TICKS.items())
    return Ticks(ticks=ticks, rejected=rejected)


def stored_ticks(ticks: pl.DataFrame, run_id: str, ingested_at: pl.Expr) -> pl.DataFrame:
    """Rows for md.ticks: new trades only, last action per key wins (a provider may resend); with the trade
    each corrects and the event id that announced it (`event_id`, null when the frame has none)."""
    key = ["instrument_id", "provider", "session_date", "ts", "sequence"]
    event_id = pl.col("event_id") if "event_id" in ticks.columns else pl.lit(None, pl.String).alias("event_id")
    return ticks.filter(pl.col("action") == "new").unique(subset=key, keep="last", maintain_order=True).select(
        "instrument_id", "symbol", "session_date", pl.col("ts").dt.cast_time_unit("us"), "provider", "price",
        "size", "exchange", "conditions", "sequence", pl.lit(run_id).alias("run_id"),
        ingested_at.cast(pl.Datetime("us", "UTC")).alias("ingested_at"), event_id, "corrects",
    )
