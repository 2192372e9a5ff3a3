"""Streamed minute bars (Alpaca `b`, and `u` updated bars) through the minute-bar chain into md.bars_1m.

The same steps as REST minute bars: the pandera schema and rules of `quality.validate` (`StandardBars1m`;
rejects to `quality.quarantine`, dataset `bars_1m`, stage `stream`), `normalize.minute_bars` (instrument
ids, exchange session dates), md.bars_1m, and one `md.bars.1m.v1` message per instrument session that
changed (the session's stored stream bars, so the last message is its current state). They are stored
under their own provider name, `<provider>-stream` (e.g. `alpaca-stream`), so they never mix with the
REST backfill of the same provider.

The REST bar wins once it exists: a streamed bar whose minute the REST provider already stored is not
stored (counted as `superseded_by_rest`), and when the REST backfill of a range is stored afterwards,
`reconcile_stream_bars` retires the stream's bars of the minutes it covers (kept in md.bars_1m_revisions,
change `delete`) and records how far they differed (`quality.check_results`, check `stream_vs_rest`).
Daily bars (`d`) stay on the raw topic only (the REST daily bars are the record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import polars as pl
import psycopg

from mdpipeline.contracts.frames import STORED_BARS_1M
from mdpipeline.distribute.outbox import enqueue, session_outbox_rows
from mdpipeline.distribute.topics import BARS_1M
from mdpipeline.normalize.minute_bars import normalize_bars_1m
from mdpipeline.providers.base import STANDARD_COLUMNS
from mdpipeline.quality.schemas import StandardBars1m
from mdpipeline.quality.validate import validate
from mdpipeline.sessions import with_session_date
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions, time_bounds
from mdpipeline.storage.quarantine_store import record_check

STREAM_SUFFIX = "-stream"
MINUTE_KINDS = ("b", "u")
STREAM_VS_REST = "stream_vs_rest"
_KEY = ("instrument_id", "provider", "session_date", "ts")
_VALUES = ("open", "high", "low", "close", "volume", "vwap", "trades")


def stream_provider(provider: str) -> str:
    """The provider name streamed bars are stored under (`alpaca` -> `alpaca-stream`)."""
    return provider + STREAM_SUFFIX


@dataclass(frozen=True)
class StreamBarsReport:
    """What applying a range's streamed bars did."""

    stored: int = 0  # new or changed minute bars
    superseded_by_rest: int = 0  # not stored: the REST provider had the minute already
    quarantined: int = 0
    sessions_announced: int = 0


def standard_minute_bars(parsed: pl.DataFrame) -> pl.DataFrame:
    """Parsed stream bars (`parse.STREAM_BARS`) -> the standard minute-bar frame of one provider's transform;
    an updated bar (`u`) replaces the bar of its minute received before it."""
    minute = parsed.filter(pl.col("kind").is_in(MINUTE_KINDS)).unique(
        subset=["provider", "symbol", "ts"], keep="last", maintain_order=True)
    return minute.select(
        "provider", *(pl.col(c).cast(t) for c, t in STANDARD_COLUMNS["bars_1m"].items() if c != "raw_payload_id"),
        pl.lit(None, pl.Int64).alias("raw_payload_id"),
    )


def apply_stream_bars(conn: psycopg.Connection, parsed: pl.DataFrame, *, symbology: pl.DataFrame, run_id: str,
                      calendar_name: str, ingested_at: datetime, headers: dict[str, str]) -> StreamBarsReport:
    """Validate, normalize, store and announce the minute bars of `parsed` (within the caller's transaction)."""
    standard = standard_minute_bars(parsed)
    report = StreamBarsReport()
    for (provider,), bars in standard.group_by("provider", maintain_order=True):
        one = _apply(conn, bars.drop("provider"), str(provider), symbology=symbology, run_id=run_id,
                     calendar_name=calendar_name, ingested_at=ingested_at, headers=headers)
        report = StreamBarsReport(*(a + b for a, b in zip(_counts(report), _counts(one), strict=True)))
    return report


def _counts(report: StreamBarsReport) -> tuple[int, int, int, int]:
    return report.stored, report.superseded_by_rest, report.quarantined, report.sessions_announced


def _apply(conn: psycopg.Connection, bars: pl.DataFrame, provider: str, *, symbology: pl.DataFrame, run_id: str,
           calendar_name: str, ingested_at: datetime, headers: dict[str, str]) -> StreamBarsReport:
    source = stream_provider(provider)
    checked = validate(with_session_date(bars, calendar_name), StandardBars1m, key=("symbol", "ts"))
    normalized = normalize_bars_1m(checked.outcome.valid, source, symbology, calendar_name)
    rejects = pl.concat([checked.outcome.quarantined, normalized.unmapped], how="diagonal_relaxed")
    if rejects.height:
        _quarantine(conn, rejects, source, run_id)
    rows = normalized.bars.with_columns(pl.lit(run_id).alias("run_id"), pl.lit(ingested_at).alias("ingested_at"))
    rows = rows.select(pl.col(c).cast(t) for c, t in STORED_BARS_1M.items())
    if not rows.height:
        return StreamBarsReport(quarantined=rejects.height)
    ensure_partitions(conn, "md.bars_1m", rows["session_date"].min(), rows["session_date"].max())  # type: ignore[arg-type]
    conn.execute("create temporary table _stream_bars (like md.bars_1m) on commit drop")
    with conn.cursor() as cur:
        copy_frame(cur, "_stream_bars", rows)
    superseded = conn.execute(
        "delete from _stream_bars s using md.bars_1m b where b.provider = %s and b.instrument_id = s.instrument_id"
        " and b.session_date = s.session_date and b.ts = s.ts", (provider,)).rowcount
    columns = ", ".join(STORED_BARS_1M)
    differs = " or ".join(f"t.{c} is distinct from s.{c}" for c in _VALUES)
    key = " and ".join(f"t.{c} = s.{c}" for c in _KEY)
    conn.execute(f"insert into md.bars_1m_revisions ({columns}, superseded_at, change)"
                 f" select {', '.join('t.' + c for c in STORED_BARS_1M)}, %s, 'update'"
                 f" from md.bars_1m t join _stream_bars s on {key} where {differs}", (ingested_at,))
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*_VALUES, "symbol", "run_id", "ingested_at"))
    changed = conn.execute(
        f"insert into md.bars_1m as t ({columns}) select {columns} from _stream_bars s"
        f" on conflict ({', '.join(_KEY)}) do update set {updates}"
        f" where {' or '.join(f't.{c} is distinct from excluded.{c}' for c in _VALUES)}"
        " returning t.instrument_id, t.session_date").fetchall()
    conn.execute("drop table _stream_bars")
    sessions = pl.DataFrame(changed, schema={"instrument_id": pl.Int64(), "session_date": pl.Date()},
                            orient="row").unique()
    announced = _announce(conn, source, sessions, headers)
    return StreamBarsReport(stored=len(changed), superseded_by_rest=superseded, quarantined=rejects.height,
                            sessions_announced=announced)


def _quarantine(conn: psycopg.Connection, rejects: pl.DataFrame, source: str, run_id: str) -> None:
    """Rejected stream bars -> quality.quarantine (dataset bars_1m, stage stream), the row as JSON."""
    rows = rejects.select(
        pl.lit("bars_1m").alias("dataset"), pl.lit(source).alias("provider"), pl.lit("stream").alias("stage"),
        "session_date", "symbol", "check_name", "reason",
        pl.concat_str(pl.lit("\x01"), pl.col("row_data")).alias("row_data"), pl.lit(run_id).alias("run_id"),
    )
    with conn.cursor() as cur:
        copy_frame(cur, "quality.quarantine", rows)


def _announce(conn: psycopg.Connection, source: str, sessions: pl.DataFrame, headers: dict[str, str]) -> int:
    """One md.bars.1m.v1 message per changed instrument session: the session's stored stream bars."""
    if not sessions.height:
        return 0
    columns = ", ".join(STORED_BARS_1M)
    stored = conn.execute(
        f"select {columns} from md.bars_1m where provider = %s and (instrument_id, session_date) in"
        " (select * from unnest(%s::bigint[], %s::date[]))",
        (source, sessions["instrument_id"].to_list(), sessions["session_date"].to_list())).fetchall()
    frame = pl.DataFrame(stored, schema=STORED_BARS_1M, orient="row")
    return enqueue(conn, session_outbox_rows(frame, BARS_1M.name, {**headers, "mdp-provider": source}))


def reconcile_stream_bars(conn: psycopg.Connection, provider: str, *, start: date, end: date,
                          instruments: tuple[int, ...] | None, run_id: str, ingested_at: datetime) -> dict[str, float]:
    """After the REST bars of `provider`, sessions [start, end] (and `instruments`), are stored: the stream's bars of
    the minutes they cover are retired (md.bars_1m_revisions, change `delete`), and how far they differed is
    recorded (`quality.check_results`, check `stream_vs_rest`, when any were compared); returns those numbers."""
    source = stream_provider(provider)
    lower, upper = time_bounds(start, end)  # on `ts` too, so TimescaleDB looks only at the range's chunks
    where = "s.provider = %s and s.session_date between %s and %s and s.ts >= %s and s.ts < %s"
    params: list[object] = [source, start, end, lower, upper]
    if instruments is not None:
        where += " and s.instrument_id = any(%s)"
        params.append(list(instruments))
    match = (f"from md.bars_1m s join md.bars_1m r on r.provider = %s and r.instrument_id = s.instrument_id"
             f" and r.session_date = s.session_date and r.ts = s.ts where {where}")
    row = conn.execute(
        "select count(*), max(abs(s.close - r.close) / r.close) * 1e4, avg(abs(s.close - r.close) / r.close) * 1e4,"
        " max(abs(s.volume - r.volume)), count(*) filter (where (s.open, s.high, s.low, s.close, s.volume)"
        f" is distinct from (r.open, r.high, r.low, r.close, r.volume)) {match}", [provider, *params]).fetchone()
    compared = int(row[0]) if row else 0
    if not compared:
        return {"compared": 0}
    columns = ", ".join(STORED_BARS_1M)
    conn.execute(
        f"with gone as (delete from md.bars_1m s using md.bars_1m r where r.provider = %s and r.instrument_id ="
        f" s.instrument_id and r.session_date = s.session_date and r.ts = s.ts and {where} returning s.*)"
        f" insert into md.bars_1m_revisions ({columns}, superseded_at, change)"
        f" select {columns}, %s, 'delete' from gone", [provider, *params, ingested_at])
    metrics = {"compared": compared, "differing": int(row[4]), "max_close_diff_bps": float(row[1] or 0),
               "mean_close_diff_bps": float(row[2] or 0), "max_volume_diff": float(row[3] or 0)}
    record_check(conn, asset_key=f"md/{provider}/bars_1m", check_name=STREAM_VS_REST, start=start, end=end,
                 passed=metrics["differing"] == 0, severity="WARN", metadata=metrics, run_id=run_id)
    return metrics
