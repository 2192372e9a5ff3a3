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

from mdpipeline.chunks import plan_chunks, symbol_groups
from mdpipeline.quality.detectors import detect, merge_reports
from mdpipeline.quality.divergence import divergence, merge_divergence
from mdpipeline.quality.findings import concat_findings
from mdpipeline.quality.metrics import json_safe, partition_metrics
from mdpipeline.quality.thresholds import Thresholds
from mdpipeline.sessions import session_dates
from mdpipeline.storage.bars import read_bars_1d, read_bars_1m, stored_providers, stored_symbols
from mdpipeline.storage.corporate_actions import actions_by_symbol
from mdpipeline.storage.quarantine_store import quarantined_by_check
from mdpipeline.storage.reader import ArrowReader

READERS = {"bars_1d": read_bars_1d, "bars_1m": read_bars_1m}
MINUTES_PER_SESSION = 390.0
MEASURED = ("ts", "open", "high", "low", "close", "volume")  # what the detectors and divergence read
BAR_DATASETS = tuple(READERS)


def measure_stored(
    conn: psycopg.Connection, *, provider: str, dataset: str, start: date, end: date, thresholds: Thresholds,
    instruments: pl.DataFrame | Sequence[str] | None = None, calendar_name: str = "XNYS", budget: int | None = None,
    others: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Quality metrics of `provider`'s stored `dataset` bars of the sessions [start, end] (JSON-safe).

    `instruments`: the symbols the provider serves (a frame with `symbol`, `valid_from`, `valid_to`
    respects symbology validity); None expects only what is stored. The range is read in chunks of
    at most `budget` rows: daily bars by symbol groups over the whole range (their bands learn from
    all of it), minute bars by sessions x symbols with the configured look-back before each chunk.
    `others`: the other providers that may hold the same bars (None: look them up in the table).
    """
    if dataset not in READERS:
        raise ValueError(f"no stored bars for dataset {dataset!r} (one of {', '.join(READERS)})")
    read = READERS[dataset]
    table = instruments if isinstance(instruments, pl.DataFrame) or instruments is None else \
        pl.DataFrame({"symbol": list(instruments)})
    symbols = sorted(set(table["symbol"].to_list())) if table is not None else stored_symbols(
        conn, dataset, provider, start, end)
    sessions = session_dates(start, end, calendar_name)
    if dataset == "bars_1d":
        pieces = [(start, end, group) for group in symbol_groups(symbols, len(sessions), 1.0, budget)]
    else:
        pieces = [(c.start, c.end, c.symbols) for c in plan_chunks(sessions, symbols, MINUTES_PER_SESSION, budget)]
    limits = thresholds.divergence
    first = lookback_start(start, thresholds.lookback_sessions, calendar_name)
    actions = actions_by_symbol(conn, first, end)
    reports, diverged = [], []
    columns = ["instrument_id", "symbol", "session_date", *MEASURED]

    with ArrowReader(conn) as reader:  # one session for every read of the range
        def of(who: str, lo: date, hi: date, names: list[str]) -> pl.DataFrame:
            # Unsorted (the detectors order each instrument's bars themselves) and without the provider's
            # name on every row (it is the filter): what the server would sort and send for nothing.
            bars = read(conn, start=lo, end=hi, provider=who, symbols=names, columns=columns, ordered=False,
                        reader=reader)
            return bars.with_columns(pl.lit(who).alias("provider"))

        for lo, hi, group in pieces:
            names = list(group)
            bars = of(provider, lo, hi, names)
            before = lookback_start(lo, thresholds.lookback_sessions, calendar_name)
            history = of(provider, before, lo - timedelta(days=1), names) if before < lo else None
            expected = None if table is None else table.filter(pl.col("symbol").is_in(names))
            reports.append(detect(bars, lo, hi, thresholds=thresholds, key="symbol", calendar_name=calendar_name,
                                  instruments=expected, actions=actions, history=history))
            # Other providers' bars only when the configuration compares with anybody.
            compared = [] if limits.compare_with == [] else _compared(conn, dataset, provider, lo, hi,
                                                                      limits.compare_with, others)
            everyone = pl.concat([bars, *(of(other, lo, hi, names) for other in compared)], how="vertical")
            diverged.append(divergence(everyone, key="instrument_id", bps=limits.bps, flag_columns=limits.columns,
                                       provider=provider, compare_with=limits.compare_with))
    report = merge_reports(start, end, reports)
    across = merge_divergence(diverged, limits.bps)
    metrics = partition_metrics(start=start, end=end, rows=report.rows,
                                findings=concat_findings([report.findings, across.findings]),
                                completeness=report.completeness,
                                quarantined=quarantined_by_check(conn, provider, dataset, start, end),
                                divergence=across)
    return json_safe(metrics)


def _compared(conn: psycopg.Connection, dataset: str, provider: str, start: date, end: date,
              compare_with: Sequence[str] | None, others: Sequence[str] | None) -> list[str]:
    """The other providers that may hold bars of the range and that the configuration compares with."""
    if others is None:
        others = stored_providers(conn, dataset, start, end)
    return [p for p in others if p != provider and (compare_with is None or p in compare_with)]


def lookback_start(start: date, sessions: int, calendar_name: str = "XNYS") -> date:
    """The date `sessions` trading sessions before `start` (history for the robust bands)."""
    earlier = session_dates(start - timedelta(days=2 * sessions + 10), start - timedelta(days=1), calendar_name)
    return earlier[-sessions] if sessions and len(earlier) >= sessions else start
