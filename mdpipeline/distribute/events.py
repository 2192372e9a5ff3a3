"""Canonical frames -> Kafka events: key = instrument id, JSON value with a deterministic `event_id`.

The same data always yields the same `event_id` (a hash of topic, key and content), so consumers can
deduplicate re-runs; run ids and ingest times are lineage, carried in headers, not in the identity.
Message layouts are documented in docs/events.md and as JSON Schema in docs/schemas/.
"""

from __future__ import annotations

import hashlib
from datetime import date

import polars as pl

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS, BARS_1M_ARRAY_FIELDS, BARS_1M_SESSION_FIELDS

SCHEMA_NAMES = {
    "md.bars.1d.v1": ("mdpipeline.bars_1d", 1),
    "md.bars.1m.v1": ("mdpipeline.bars_1m", 1),
    "md.corporate_actions.v1": ("mdpipeline.corporate_actions", 1),
    "md.ticks.v1": ("mdpipeline.ticks", 1),
    "md.quotes.v1": ("mdpipeline.quotes", 1),
    "md.dead_letter.v1": ("mdpipeline.dead_letter", 1),
}


def lineage_headers(run_id: str, start: date, end: date, provider: str) -> dict[str, str]:
    """Lineage carried in message headers (never part of the event identity)."""
    return {"mdp-run-id": run_id, "mdp-partition-start": start.isoformat(),
            "mdp-partition-end": end.isoformat(), "mdp-provider": provider}


def event_ids(topic: str, keys: pl.Series, data: pl.Series) -> pl.Series:
    """First 32 hex digits of sha256(topic \\x1f key \\x1f data) per row."""
    identity = (topic + "\x1f") + keys.fill_null("") + "\x1f" + data
    return pl.Series("event_id", [hashlib.sha256(s.encode()).hexdigest()[:32] for s in identity], dtype=pl.String)


def envelope(topic: str, event_id: pl.Expr, data: pl.Expr) -> pl.Expr:
    """The JSON value: `{"event_id", "schema", "schema_version", "data"}` with `data` already JSON."""
    schema_name, version = SCHEMA_NAMES[topic]
    return pl.concat_str(
        pl.lit('{"event_id":"'), event_id,
        pl.lit(f'","schema":"{schema_name}","schema_version":{version},"data":'),
        data, pl.lit("}"),
    )


def _field(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A field as it appears in JSON: dates as YYYY-MM-DD, instants as RFC 3339 UTC (ns), else as is."""
    dtype = frame.schema[name]
    if dtype == pl.Date:
        return pl.col(name).dt.to_string("%Y-%m-%d")
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.9fZ")
    return pl.col(name)


def json_events(frame: pl.DataFrame, topic: str, fields: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per event: `key` (instrument id), `event_id`, `value` (all strings), in the frame's order.

    `optional` fields follow `fields` in the JSON and are left out of a row's data when null (a field added
    to a topic that way keeps the data text, and so the event_id, of the rows without it).
    """
    data = pl.struct(_field(frame, c) for c in (*fields, *optional)).struct.json_encode()
    for name in reversed(optional):  # keys are never escaped in json_encode's output: a literal match is a key
        data = data.str.replace(f',"{name}":null}}', "}", literal=True)
    encoded = frame.select(pl.col("instrument_id").cast(pl.String).alias("key"), data.alias("data"))
    return encoded.with_columns(event_ids(topic, encoded["key"], encoded["data"])).select(
        "key", "event_id", envelope(topic, pl.col("event_id"), pl.col("data")).alias("value"),
    )


def session_events(frame: pl.DataFrame, topic: str) -> pl.DataFrame:
    """One event per (instrument, provider, session) of minute bars: `key`, `event_id`, `value`,
    `provider`, `session_date`, with the session's bars as columnar arrays ordered by `ts`.

    Ordered by session, then instrument. Columnar: the grouping and JSON encoding are polars expressions.
    """
    group = ["instrument_id", "provider", "session_date"]
    sessions = (frame.sort(*group, "ts")
                .group_by(group, maintain_order=True)
                .agg(pl.col("symbol").last(), *(_field(frame, c) for c in BARS_1M_ARRAY_FIELDS))
                .sort("session_date", "instrument_id", "provider"))
    encoded = sessions.select(
        pl.col("instrument_id").cast(pl.String).alias("key"),
        pl.struct(*(_field(sessions, c) for c in BARS_1M_SESSION_FIELDS),
                  pl.struct(*BARS_1M_ARRAY_FIELDS).alias("bars")).struct.json_encode().alias("data"),
        "provider", "session_date",
    )
    return encoded.with_columns(event_ids(topic, encoded["key"], encoded["data"])).select(
        "key", "event_id", envelope(topic, pl.col("event_id"), pl.col("data")).alias("value"), "provider",
        "session_date",
    )


def bar_events(frame: pl.DataFrame, topic: str) -> pl.DataFrame:
    """Daily-bar events (`key`, `event_id`, `value`) in the frame's order."""
    return json_events(frame, topic, BARS_1D_EVENT_FIELDS)
