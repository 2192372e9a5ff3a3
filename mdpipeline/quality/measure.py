"""Per-partition quality metrics of what is stored: one provider's bars of one dataset and session range.

The same numbers the Dagster checks attach to a partition (`metrics.partition_metrics`: completeness
%, rows quarantined by check, flags by kind, divergence statistics), computed from the database
alone: stored bars (`md.bars_1d` / `md.bars_1m`), the history before the range for the robust
bands, known corporate actions, `quality.quarantine` and the other providers' stored bars. The
result depends only on stored data, so measuring the same range twice gives the same dict (which
is what makes the `md.quality.v1` event ids deterministic). Pure core: no Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import polars as pl
import psycopg

from mdpipeline.quality.detectors import detect
from mdpipeline.quality.divergence import divergence
from mdpipeline.quality.findings import concat_findings
from mdpipeline.quality.metrics import json_safe, partition_metrics
from mdpipeline.quality.thresholds import Thresholds
from mdpipeline.sessions import session_dates
from mdpipeline.storage.bars import read_bars_1d, read_bars_1m

READERS = {"bars_1d": read_bars_1d, "bars_1m": read_bars_1m}
BAR_DATASETS = tuple(READERS)


def measure_stored(
    conn: psycopg.Connection, *, provider: str, dataset: str, start: date, end: date, thresholds: Thresholds,
    instruments: pl.DataFrame | Sequence[str] | None = None, calendar_name: str = "XNYS",
) -> dict[str, Any]:
    """Quality metrics of `provider`'s stored `dataset` bars of the sessions [start, end] (JSON-safe).

    `instruments`: the symbols the provider serves (a frame with `symbol`, `valid_from`, `valid_to`
    respects symbology validity); None expects only what is stored.
    """
    if dataset not in READERS:
        raise ValueError(f"no stored bars for dataset {dataset!r} (one of {', '.join(READERS)})")
    read = READERS[dataset]
    bars = read(conn, start=start, end=end, provider=provider)
    first = lookback_start(start, thresholds.lookback_sessions, calendar_name)
    history = read(conn, start=first, end=start - timedelta(days=1), provider=provider) if first < start else None
    report = detect(bars, start, end, thresholds=thresholds, key="symbol", calendar_name=calendar_name,
                    instruments=instruments, actions=corporate_actions(conn, first, end), history=history)
    limits = thresholds.divergence
    everyone = read(conn, start=start, end=end)
    diverged = divergence(everyone, key="instrument_id", bps=limits.bps, flag_columns=limits.columns,
                          provider=provider, compare_with=limits.compare_with)
    metrics = partition_metrics(start=start, end=end, rows=bars.height,
                                findings=concat_findings([report.findings, diverged.findings]),
                                completeness=report.completeness,
                                quarantined=quarantined(conn, provider, dataset, start, end), divergence=diverged)
    return json_safe(metrics)


def lookback_start(start: date, sessions: int, calendar_name: str = "XNYS") -> date:
    """The date `sessions` trading sessions before `start` (history for the robust bands)."""
    earlier = session_dates(start - timedelta(days=2 * sessions + 10), start - timedelta(days=1), calendar_name)
    return earlier[-sessions] if sessions and len(earlier) >= sessions else start


def corporate_actions(conn: psycopg.Connection, start: date, end: date) -> pl.DataFrame:
    """Known corporate actions with ex-date in [start, end], by the symbol valid on the ex-date
    (whichever provider reported them, each action once)."""
    rows = conn.execute(
        "select distinct on (s.symbol, c.ex_date, c.action) s.symbol, c.ex_date, c.action, c.ratio, c.amount"
        " from ref.corporate_actions c join ref.symbology s on s.instrument_id = c.instrument_id"
        " and c.ex_date between s.valid_from and s.valid_to where c.ex_date between %s and %s"
        " order by s.symbol, c.ex_date, c.action",
        (start, end),
    ).fetchall()
    return pl.DataFrame(rows, schema={"symbol": pl.String, "ex_date": pl.Date, "action": pl.String,
                                      "ratio": pl.Float64, "amount": pl.Float64}, orient="row")


def quarantined(conn: psycopg.Connection, provider: str, dataset: str, start: date, end: date) -> dict[str, int]:
    """Rows of the range in quality.quarantine, by check name (all stages)."""
    rows = conn.execute(
        "select check_name, count(*) from quality.quarantine where dataset = %s and provider = %s"
        " and session_date between %s and %s group by check_name order by check_name",
        (dataset, provider, start, end),
    ).fetchall()
    return {str(name): int(n) for name, n in rows}
