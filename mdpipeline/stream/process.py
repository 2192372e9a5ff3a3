"""Process one raw offset range: parse, validate, normalize, store in md.ticks and md.quotes, announce, advance
offsets.

Effects in ONE transaction: tick upserts, cancels and corrections (the superseded rows moved to
md.ticks_revisions), quotes (`mdpipeline.stream.quotes`), streamed minute bars
(`mdpipeline.stream.stream_bars`), quarantined actions, quotes, bars and frames,
gap markers (`ops.stream_gaps`), outbox rows for `md.ticks.v1`, `md.quotes.v1` and `md.bars.1m.v1`, and the processed
offset, which only advances when the range is next. So a range's effect on the database happens exactly
once however often the job runs; the outbox is relayed after the commit (at least once, deduplicable by event_id),
and the offset is mirrored to the Kafka consumer group last.

A bad frame costs that frame only: frames that cannot be parsed (`mdpipeline.stream.bad_frames`) and
malformed gap markers are quarantined with the reason and the frame, and the offset advances past them.
When the stored offset no longer fits the log (a recreated or truncated topic, frames deleted before
they were processed), the range resumes where `mdpipeline.stream.offsets.resume_offset` says and the
interval in between is recorded as a gap (origin `log_reset`), from the last processed frame's receive
time to the first frame of the range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import psycopg

from mdpipeline.contracts.events import TICKS_EVENT_FIELDS, TICKS_OPTIONAL_FIELDS
from mdpipeline.contracts.realtime import PARSED_QUOTES
from mdpipeline.distribute.outbox import append_outbox, outbox_rows
from mdpipeline.distribute.relay import DrainReport, drain
from mdpipeline.distribute.topics import BARS_1M, DEAD_LETTER, QUOTES, TICKS, ensure_topics
from mdpipeline.sessions import exchange_timezone
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions
from mdpipeline.stream.bad_frames import frame_quarantine_rows, gap_markers, parse_frames
from mdpipeline.stream.corrections import TRADE_KEY, keep_changed_versions, retire_ticks, with_event_ids
from mdpipeline.stream.offsets import (
    DEFAULT_CONSUMER,
    Claim,
    claim_range,
    commit_consumer_offset,
    log_position,
    read_messages,
)
from mdpipeline.stream.parse import RECORD, STREAM_BARS, TRADE_ACTIONS, stream_records
from mdpipeline.stream.quotes import normalize_quotes, store_quotes
from mdpipeline.stream.stream_bars import StreamBarsReport, apply_stream_bars
from mdpipeline.stream.ticks import normalize_ticks, stored_ticks

_TICK_KEY = "instrument_id, provider, session_date, ts, sequence"
_REASON_CHARS = 500


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
    cancels: int = 0  # every cancel, a correction's cancel of the original included
    corrections: int = 0
    quotes: int = 0
    quarantined: int = 0  # rejected rows (trade actions and quotes)
    quotes_quarantined: int = 0
    stream_bars: int = 0  # minute bars stored under <provider>-stream (new or changed)
    stream_bars_superseded: int = 0  # not stored: the REST bar of that minute exists
    stream_bars_quarantined: int = 0
    frames_quarantined: int = 0
    gaps: int = 0
    published: int = 0
    reset: str | None = None  # why the range did not start at the stored offset (a gap was recorded)
    last_received_at: datetime | None = None  # when the collector received the range's newest frame


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
    log_now = log_position(bootstrap_servers, topic, partition)
    raw = read_messages(bootstrap_servers, topic, partition, first, last=last, timeout=read_timeout)
    records, bad_data = parse_frames(raw, stream_records)
    actions = records.filter(pl.col(RECORD) == "trade")
    parsed_quotes = records.filter(pl.col(RECORD) == "quote").select(list(PARSED_QUOTES))
    parsed_bars = records.filter(pl.col(RECORD) == "bar").select(list(STREAM_BARS))
    markers, bad_markers = gap_markers(raw)
    timezone = exchange_timezone(calendar_name)
    bad_frames = frame_quarantine_rows(raw, pl.concat([bad_data, bad_markers]), topic=topic, partition=partition,
                                       run_id=run_id, timezone=timezone)
    normalized = normalize_ticks(actions.select(list(TRADE_ACTIONS)), symbology, calendar_name)
    ticks = normalized.ticks
    quotes = normalize_quotes(parsed_quotes, symbology, calendar_name)
    headers = {"mdp-run-id": run_id, "mdp-raw-topic": topic, "mdp-raw-offsets": f"{partition}:{first}-{last}"}
    gaps = corrections = stored_quotes = 0
    bars = StreamBarsReport()
    with conn.transaction():
        claim = claim_range(conn, topic, partition, first, last, run_id, consumer, log_now=log_now,
                            bootstrap_servers=bootstrap_servers, last_received_at=_latest(raw, "received_at"),
                            last_landed_at=_latest(raw, "landed_at"))
        if claim.applied:
            ticks = with_event_ids(conn, ticks)
            corrections = _store_ticks(conn, ticks, run_id)
            quarantine_actions(conn, normalized.rejected, run_id)
            stored_quotes = store_quotes(conn, quotes, run_id=run_id, ingested_at=datetime.now(UTC), headers=headers)
            bars = apply_stream_bars(conn, parsed_bars, symbology=symbology, run_id=run_id,
                                     calendar_name=calendar_name, ingested_at=datetime.now(UTC), headers=headers)
            if bad_frames.height:
                with conn.cursor() as cur:
                    copy_frame(cur, "quality.quarantine", bad_frames)
            topic_id = log_now.topic_id if log_now else None
            gaps = _record_gaps(conn, topic, topic_id, markers)
            if claim.reset:
                gaps += _record_reset(conn, topic, topic_id, raw, claim)
            for (provider,), group in ticks.group_by("provider", maintain_order=True):
                append_outbox(conn, outbox_rows(group, TICKS.name, TICKS_EVENT_FIELDS,
                                                {**headers, "mdp-provider": str(provider)}, TICKS_OPTIONAL_FIELDS))
    relayed = DrainReport()
    if ticks.height or quotes.quotes.height or bars.sessions_announced or not claim.applied:
        # (a re-run of an applied range still relays what is pending)
        ensure_topics(bootstrap_servers, (TICKS, QUOTES, BARS_1M, DEAD_LETTER))
        relayed = drain(conn, bootstrap_servers, topics=(TICKS.name, QUOTES.name, BARS_1M.name, DEAD_LETTER.name))
    if claim.applied:
        commit_consumer_offset(bootstrap_servers, topic, partition, last + 1)
    if not claim.applied:
        return RangeReport(topic, partition, first, last, applied=False, published=relayed.total)
    data = raw.filter(pl.col("kind") == "data")
    return RangeReport(
        topic, partition, first, last, applied=True, frames=data.height,
        trades=int((ticks["action"] == "new").sum()), cancels=int((ticks["action"] == "cancel").sum()),
        corrections=corrections,
        quarantined=normalized.rejected.height + quotes.rejected.height, quotes=stored_quotes,
        quotes_quarantined=quotes.rejected.height, stream_bars=bars.stored,
        stream_bars_superseded=bars.superseded_by_rest, stream_bars_quarantined=bars.quarantined,
        frames_quarantined=bad_frames.height, gaps=gaps,
        published=relayed.total, reset=claim.reset, last_received_at=_latest(raw, "received_at"),
    )


def _latest(raw: pl.DataFrame, column: str) -> datetime | None:
    value = raw[column].max() if raw.height else None
    return value if isinstance(value, datetime) else None


def _store_ticks(conn: psycopg.Connection, ticks: pl.DataFrame, run_id: str) -> int:
    """Upsert new trades, then retire cancelled ones (a correction's original included) into md.ticks_revisions;
    a stored trade that a resend changes is kept there too. Returns the corrections among the cancels."""
    if not ticks.height:
        return 0
    now = datetime.now(UTC)
    days = ticks["session_date"]
    ensure_partitions(conn, "md.ticks", days.min(), days.max())  # type: ignore[arg-type]
    rows = stored_ticks(ticks, run_id, pl.lit(now))
    if rows.height:
        conn.execute("create temporary table _ticks (like md.ticks) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_ticks", rows)
        keep_changed_versions(conn, "_ticks", run_id, now)
        columns = ", ".join(rows.columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in rows.columns if c not in _TICK_KEY)
        conn.execute(f"insert into md.ticks ({columns}) select {columns} from _ticks"
                     f" on conflict ({_TICK_KEY}) do update set {updates}")
    corrected_by = ticks.filter(pl.col("action") == "new", pl.col("corrects").is_not_null()).select(
        *TRADE_KEY[:3], pl.col("corrects").alias("sequence"), pl.col("sequence").alias("superseded_by"),
    ).unique(subset=TRADE_KEY, keep="last")
    gone = ticks.filter(pl.col("action") == "cancel").select(TRADE_KEY).join(
        corrected_by, on=TRADE_KEY, how="left").with_columns(
        pl.when(pl.col("superseded_by").is_null()).then(pl.lit("cancel")).otherwise(pl.lit("correct")).alias("change"))
    retire_ticks(conn, gone, run_id, now)
    return int((gone["change"] == "correct").sum())


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


def _record_gaps(conn: psycopg.Connection, topic: str, topic_id: str | None, markers: list[tuple[int, dict]]) -> int:
    """Gap markers landed by collectors -> ops.stream_gaps (once per raw offset of a topic incarnation)."""
    recorded = 0
    for offset, gap in markers:
        cur = conn.execute(
            "insert into ops.stream_gaps (provider, topic, topic_id, raw_offset, disconnected_at, reconnected_at,"
            " reason) values (%s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (gap["provider"], topic, topic_id, offset, gap["disconnected_at"], gap["reconnected_at"],
             gap["reason"][:_REASON_CHARS]))
        recorded += cur.rowcount
    return recorded


def _record_reset(conn: psycopg.Connection, topic: str, topic_id: str | None, raw: pl.DataFrame,
                  claim: Claim) -> int:
    """The interval a log reset lost, as a gap (origin `log_reset`): from the last processed frame's receive
    time (else when its offset was stored) to the first frame of the range."""
    previous = claim.previous
    start = (previous.last_received_at or previous.updated_at) if previous else None
    firsts = raw.head(1)
    end = (firsts["received_at"][0] or firsts["landed_at"][0]) if firsts.height else datetime.now(UTC)
    if start is None or end is None:
        return 0
    provider = (firsts["provider"][0] if firsts.height and firsts["provider"][0] else None) or _provider_of(topic)
    cur = conn.execute(
        "insert into ops.stream_gaps (provider, topic, topic_id, raw_offset, disconnected_at, reconnected_at, reason,"
        " origin) values (%s, %s, %s, %s, %s, %s, %s, 'log_reset') on conflict do nothing",
        (provider, topic, topic_id, int(firsts["offset"][0]) if firsts.height else 0, min(start, end), end,
         (claim.reset or "")[:_REASON_CHARS]))
    return cur.rowcount


def _provider_of(topic: str) -> str:
    """`raw.stream.<provider>.v1` -> provider (the topic's name when it does not follow the pattern)."""
    found = re.fullmatch(r"raw\.stream\.([^.]+)\.v\d+", topic)
    return found.group(1) if found else topic
