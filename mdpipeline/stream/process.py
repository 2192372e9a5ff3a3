"""Process one raw offset range: parse, validate, normalize, store in md.ticks, announce, advance offsets.

Effects in ONE transaction: tick upserts, cancels (deleted from md.ticks), quarantined actions, gap
markers (`ops.stream_gaps`), outbox rows for `md.ticks.v1`, and the processed offset, which only
advances when the range is next. So a range's effect on the database happens exactly once however
often the job runs; the outbox is relayed after the commit (at least once, deduplicable by event_id),
and the offset is mirrored to the Kafka consumer group last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import psycopg

from mdpipeline.distribute.events import TICKS_EVENT_FIELDS
from mdpipeline.distribute.outbox import append_outbox, outbox_rows
from mdpipeline.distribute.relay import DrainReport, drain
from mdpipeline.distribute.topics import DEAD_LETTER, TICKS, ensure_topics
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions
from mdpipeline.stream.offsets import DEFAULT_CONSUMER, claim_range, commit_consumer_offset, read_messages
from mdpipeline.stream.parse import trade_actions
from mdpipeline.stream.ticks import normalize_ticks, stored_ticks

_TICK_KEY = "instrument_id, provider, session_date, ts, sequence"


@dataclass(frozen=True)
class RangeReport:
    """What processing one raw range did."""

    topic: str
    partition: int
    first: int
    last: int
    applied: bool  # False: the range had been applied before (nothing written again)
    frames: int = 0
    trades: int = 0
    cancels: int = 0
    quarantined: int = 0
    gaps: int = 0
    published: int = 0


def process_range(
    conn: psycopg.Connection,
    bootstrap_servers: str,
    *,
    topic: str,
    partition: int,
    first: int,
    last: int,
    symbology: pl.DataFrame,
    run_id: str,
    calendar_name: str = "XNYS",
    consumer: str = DEFAULT_CONSUMER,
    read_timeout: float = 30.0,
) -> RangeReport:
    """Apply raw offsets [first, last] of `topic`/`partition` (see the module docstring)."""
    raw = read_messages(bootstrap_servers, topic, partition, first, last=last, timeout=read_timeout)
    data = raw.filter(pl.col("kind") == "data")
    normalized = normalize_ticks(trade_actions(data), symbology, calendar_name)
    ticks = normalized.ticks
    headers = {"mdp-run-id": run_id, "mdp-raw-topic": topic, "mdp-raw-offsets": f"{partition}:{first}-{last}"}
    with conn.transaction():
        applied = claim_range(conn, topic, partition, first, last, run_id, consumer)
        if applied:
            _store_ticks(conn, ticks, run_id)
            quarantine_actions(conn, normalized.rejected, run_id)
            gaps = _record_gaps(conn, topic, raw.filter(pl.col("kind") == "gap"))
            for (provider,), group in ticks.group_by("provider", maintain_order=True):
                append_outbox(conn, outbox_rows(group, TICKS.name, TICKS_EVENT_FIELDS,
                                                {**headers, "mdp-provider": str(provider)}))
    relayed = DrainReport()
    if ticks.height or not applied:  # a re-run of an applied range still relays what is pending
        ensure_topics(bootstrap_servers, (TICKS, DEAD_LETTER))
        relayed = drain(conn, bootstrap_servers, topics=(TICKS.name, DEAD_LETTER.name))
    commit_consumer_offset(bootstrap_servers, topic, partition, last + 1)
    if not applied:
        return RangeReport(topic, partition, first, last, applied=False, published=relayed.total)
    return RangeReport(
        topic, partition, first, last, applied=True, frames=data.height,
        trades=int((ticks["action"] == "new").sum()), cancels=int((ticks["action"] == "cancel").sum()),
        quarantined=normalized.rejected.height, gaps=gaps, published=relayed.total,
    )


def _store_ticks(conn: psycopg.Connection, ticks: pl.DataFrame, run_id: str) -> None:
    """Upsert new trades, then delete cancelled ones (a correction's original included)."""
    if not ticks.height:
        return
    days = ticks["session_date"]
    ensure_partitions(conn, "md.ticks", days.min(), days.max())  # type: ignore[arg-type]
    rows = stored_ticks(ticks, run_id, pl.lit(datetime.now(UTC)))
    if rows.height:
        conn.execute("create temporary table _ticks (like md.ticks) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_ticks", rows)
        columns = ", ".join(rows.columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in rows.columns if c not in _TICK_KEY)
        conn.execute(f"insert into md.ticks ({columns}) select {columns} from _ticks"
                     f" on conflict ({_TICK_KEY}) do update set {updates}")
    cancels = ticks.filter(pl.col("action") == "cancel").select("instrument_id", "provider", "session_date",
                                                               "sequence")
    if cancels.height:
        conn.execute("create temporary table _cancels (instrument_id bigint, provider text, session_date date,"
                     " sequence bigint) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_cancels", cancels)
        conn.execute("delete from md.ticks t using _cancels c where t.instrument_id = c.instrument_id"
                     " and t.provider = c.provider and t.session_date = c.session_date and t.sequence = c.sequence")


def quarantine_actions(conn: psycopg.Connection, rejected: pl.DataFrame, run_id: str, stage: str = "stream") -> None:
    """Rejected actions into quality.quarantine (dataset ticks, stage `stage`) with the original row."""
    if not rejected.height:
        return
    original = [c for c in ("offset", "position", "provider", "symbol", "ts", "action", "price", "size",
                            "exchange", "conditions", "sequence", "corrects") if c in rejected.columns]
    rows = rejected.select(
        pl.lit("ticks").alias("dataset"), pl.col("provider").fill_null("unknown"), pl.lit(stage).alias("stage"),
        "session_date", "symbol", "check_name", "reason",
        pl.concat_str(pl.lit("\x01"), pl.struct(pl.col(original).cast(pl.String)).struct.json_encode())
        .alias("row_data"),
        pl.lit(run_id).alias("run_id"),
    )
    with conn.cursor() as cur:
        copy_frame(cur, "quality.quarantine", rows)


def _record_gaps(conn: psycopg.Connection, topic: str, markers: pl.DataFrame) -> int:
    """Gap markers landed by collectors -> ops.stream_gaps (once per raw offset)."""
    recorded = 0
    for offset, value in zip(markers["offset"], markers["value"], strict=True):
        gap = json.loads(value)
        cur = conn.execute(
            "insert into ops.stream_gaps (provider, topic, raw_offset, disconnected_at, reconnected_at, reason)"
            " values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
            (gap["provider"], topic, offset, gap["disconnected_at"], gap["reconnected_at"], gap["reason"]))
        recorded += cur.rowcount
    return recorded
