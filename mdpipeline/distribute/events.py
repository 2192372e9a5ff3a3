"""Canonical frames -> Kafka events: key = instrument id, JSON value with a deterministic `event_id`.

The same data always yields the same `event_id` (a hash of topic, key and content), so consumers can
deduplicate re-runs; run ids and ingest times are lineage, carried in headers, not in the identity.
"""

from __future__ import annotations

import hashlib

import polars as pl

SCHEMA_NAMES = {"md.bars.1d.v1": ("mdpipeline.bars_1d", 1)}
BARS_1D_EVENT_FIELDS = (
    "instrument_id", "symbol", "session_date", "provider",
    "open", "high", "low", "close", "volume", "vwap", "trades",
)


def bar_events(frame: pl.DataFrame, topic: str) -> pl.DataFrame:
    """One row per event: `key`, `event_id`, `value` (all strings), in the frame's order."""
    schema_name, version = SCHEMA_NAMES[topic]
    encoded = frame.select(
        pl.col("instrument_id").cast(pl.String).alias("key"),
        pl.struct(
            pl.col(c).dt.to_string("%Y-%m-%d") if frame.schema[c] == pl.Date else pl.col(c)
            for c in BARS_1D_EVENT_FIELDS
        ).struct.json_encode().alias("data"),
    )
    identity = (topic + "\x1f") + encoded["key"] + "\x1f" + encoded["data"]
    event_ids = pl.Series(
        "event_id", [hashlib.sha256(s.encode()).hexdigest()[:32] for s in identity], dtype=pl.String
    )
    return encoded.with_columns(event_ids).select(
        "key",
        "event_id",
        pl.concat_str(
            pl.lit('{"event_id":"'), pl.col("event_id"),
            pl.lit(f'","schema":"{schema_name}","schema_version":{version},"data":'),
            pl.col("data"), pl.lit("}"),
        ).alias("value"),
    )
