"""Quotes from the real-time feeds -> validated canonical quotes in md.quotes, announced on md.quotes.v1.

Validation is a set of polars expressions over the whole range (no Python per quote). A quote is
rejected, with every reason that applies, when its symbol or timestamp is missing (`missing_value`), a
price is not a positive finite number or a size is not positive (`value_range`), the bid is above the ask
(`crossed_quote`) or equal to it (`locked_quote`), or no instrument holds its symbol on its session
(`symbology`). Rejected quotes go to `quality.quarantine` (dataset `quotes`) with the original row.

Quotes have no provider id: exact duplicates within a range (every field equal) are stored and announced
once, since they would have the same event id anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl
import psycopg

from mdpipeline.contracts.events import QUOTES_EVENT_FIELDS
from mdpipeline.contracts.realtime import CANONICAL_QUOTES, PARSED_QUOTES, STORED_QUOTES
from mdpipeline.distribute.events import json_events
from mdpipeline.distribute.outbox import append_outbox, outbox_rows
from mdpipeline.distribute.topics import QUOTES
from mdpipeline.normalize.bars import map_instruments
from mdpipeline.sessions import exchange_timezone
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions


@dataclass(frozen=True)
class Quotes:
    """Valid canonical quotes in raw order (with `offset`, `position`), and rejected quotes with check and reason."""

    quotes: pl.DataFrame
    rejected: pl.DataFrame


def _positive_finite(column: str, what: str) -> pl.Expr:
    value = pl.col(column)
    return pl.when(~(value.is_finite() & (value > 0)).fill_null(False)).then(
        pl.format(f"value_range: {what} must be > 0 and finite, got {{}}", value))


def _reasons() -> pl.Expr:
    bid, ask = pl.col("bid_price"), pl.col("ask_price")
    checks = [
        pl.when(pl.col("symbol").is_null()).then(pl.lit("missing_value: symbol is missing")),
        pl.when(pl.col("ts").is_null())
        .then(pl.lit("missing_value: timestamp missing, not RFC 3339 or outside 1970..2199")),
        _positive_finite("bid_price", "bid price"), _positive_finite("ask_price", "ask price"),
        pl.when(~(pl.col("bid_size") > 0).fill_null(False))
        .then(pl.format("value_range: bid size must be > 0, got {}", pl.col("bid_size"))),
        pl.when(~(pl.col("ask_size") > 0).fill_null(False))
        .then(pl.format("value_range: ask size must be > 0, got {}", pl.col("ask_size"))),
        pl.when(bid > ask).then(pl.format("crossed_quote: bid {} is above ask {}", bid, ask)),
        pl.when(bid == ask).then(pl.format("locked_quote: bid equals ask ({})", bid)),
    ]
    return pl.concat_str(checks, separator="; ", ignore_nulls=True).replace("", None)


def normalize_quotes(parsed: pl.DataFrame, symbology: pl.DataFrame, calendar_name: str = "XNYS") -> Quotes:
    """Validate parsed quotes (`PARSED_QUOTES`) and attach instrument ids by the symbology valid on their session."""
    tz = exchange_timezone(calendar_name)
    checked = parsed.select(list(PARSED_QUOTES)).with_columns(
        pl.col("ts").dt.convert_time_zone(tz).dt.date().alias("session_date"), _reasons().alias("reason"))
    invalid = checked.filter(pl.col("reason").is_not_null()).with_columns(
        pl.col("reason").str.split(":").list.first().alias("check_name"))
    mapped = map_instruments(checked.filter(pl.col("reason").is_null()).drop("reason"), symbology, "session_date")
    rejected = pl.concat([invalid, mapped.unmapped], how="diagonal_relaxed")
    quotes = mapped.bars.select("offset", "position", *(pl.col(c).cast(t) for c, t in CANONICAL_QUOTES.items()))
    return Quotes(quotes=quotes.unique(subset=list(CANONICAL_QUOTES), keep="first", maintain_order=True),
                  rejected=rejected)


def quote_quarantine_rows(rejected: pl.DataFrame, run_id: str, stage: str = "stream") -> pl.DataFrame:
    """Rejected quotes as `quality.quarantine` rows (dataset quotes) with the original row as jsonb."""
    original = [c for c in PARSED_QUOTES if c in rejected.columns]
    return rejected.select(
        pl.lit("quotes").alias("dataset"), pl.col("provider").fill_null("unknown"), pl.lit(stage).alias("stage"),
        "session_date", "symbol", "check_name", "reason",
        pl.concat_str(pl.lit("\x01"), pl.struct(pl.col(original).cast(pl.String)).struct.json_encode())
        .alias("row_data"),
        pl.lit(run_id).alias("run_id"),
    )


def store_quotes(conn: psycopg.Connection, quotes: Quotes, *, run_id: str, ingested_at: datetime,
                 headers: dict[str, str]) -> int:
    """Within the caller's transaction: quotes into md.quotes (binary COPY), their rejects into quarantine, their
    events into the outbox (per provider, `headers` + `mdp-provider`); returns the quotes stored."""
    if quotes.rejected.height:
        with conn.cursor() as cur:
            copy_frame(cur, "quality.quarantine", quote_quarantine_rows(quotes.rejected, run_id))
    frame = quotes.quotes
    if not frame.height:
        return 0
    ensure_partitions(conn, "md.quotes", frame["session_date"].min(), frame["session_date"].max())  # type: ignore[arg-type]
    event_ids = json_events(frame, QUOTES.name, QUOTES_EVENT_FIELDS)["event_id"]
    rows = frame.with_columns(
        pl.col("offset").alias("raw_offset"), pl.col("position").alias("raw_position"), pl.lit(run_id).alias("run_id"),
        pl.lit(ingested_at).alias("ingested_at"), event_ids.alias("event_id"),
    ).select(pl.col(c).cast(t) for c, t in STORED_QUOTES.items())
    with conn.cursor() as cur:
        copy_frame(cur, "md.quotes", rows)
    for (provider,), group in frame.group_by("provider", maintain_order=True):
        append_outbox(conn, outbox_rows(group, QUOTES.name, QUOTES_EVENT_FIELDS,
                                        {**headers, "mdp-provider": str(provider)}))
    return frame.height
